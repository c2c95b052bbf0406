"""The batch-invariant kernels: a row's result never depends on the rows or keys beside it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import make_tiny_llama

from specplug.adapters.hf.attention_kernel import deterministic_exp, tree_attention
from specplug.adapters.hf.invariant import (
    InvariantKVCache,
    PackedLinear,
    invariant_supported,
    make_invariant,
    new_cache,
    prefill_visibility,
    tree_pass_mask,
)
from specplug.adapters.hf.kv import cache_kwarg
from specplug.adapters.hf.precision import resolve_dtype

mkldnn = pytest.mark.skipif(
    not (hasattr(torch.ops.mkldnn, "_reorder_linear_weight") and torch.backends.mkldnn.is_available()),
    reason="this torch has no oneDNN prepacked linear",
)


def test_deterministic_exp_is_accurate():
    x = -np.concatenate([np.linspace(0, 87, 20001), np.random.default_rng(0).uniform(0, 87, 5000)])
    x = x.astype(np.float32)
    got, want = deterministic_exp(x).astype(np.float64), np.exp(x.astype(np.float64))
    assert np.max(np.abs(got - want) / want) < 5e-7
    assert deterministic_exp(np.array([-100.0, -0.0], np.float32))[0] < 2e-38


def _attention_inputs(rng, b=2, h=6, g=2, d=16, t=40, w=5):
    q = rng.standard_normal((b, h, w, d)).astype(np.float32)
    k = rng.standard_normal((b, g, t, d)).astype(np.float32)
    v = rng.standard_normal((b, g, t, d)).astype(np.float32)
    return q, k, v


def _run(q, k, v, prefix, ptr, slots):
    b, h, w, d = q.shape
    out = np.empty((b, w, h, d), np.float32)
    kt = np.ascontiguousarray(k.transpose(0, 1, 3, 2))
    tree_attention(q, kt, v, prefix, ptr, slots, np.float32(d**-0.5), out)
    return out


def test_tree_attention_matches_softmax_attention():
    rng = np.random.default_rng(1)
    q, k, v = _attention_inputs(rng)
    b, h, w, d = q.shape
    prefix = np.array([[7, 9, 30, 1, 12], [3, 3, 3, 3, 3]], np.int64)
    extra = [[35, 37], [], [31], [2, 39], [36], [20], [20, 21], [20, 22], [20, 21, 23], []]
    ptr = np.concatenate([[0], np.cumsum([len(e) for e in extra])]).astype(np.int64)
    slots = np.array([s for e in extra for s in e], np.int64)
    out = _run(q, k, v, prefix, ptr, slots)
    for bi in range(b):
        for wi in range(w):
            vis = list(range(prefix[bi, wi])) + extra[bi * w + wi]
            for hi in range(h):
                gi = hi // (h // k.shape[1])
                s = k[bi, gi, vis].astype(np.float64) @ q[bi, hi, wi].astype(np.float64) * d**-0.5
                p = np.exp(s - s.max())
                ref = (p / p.sum()) @ v[bi, gi, vis].astype(np.float64)
                np.testing.assert_allclose(out[bi, wi, hi], ref, rtol=1e-5, atol=1e-6)


def test_tree_attention_output_does_not_depend_on_the_split_or_the_neighbours():
    """AR sees positions 0..p in the cache; a verify pass sees a prefix, stale slots and the
    ancestors among new slots: same keys in the same order, so the same bits."""
    rng = np.random.default_rng(2)
    n, d, g, h = 23, 16, 2, 4
    keys = rng.standard_normal((n, g, d)).astype(np.float32)
    vals = rng.standard_normal((n, g, d)).astype(np.float32)
    q = rng.standard_normal((1, h, 1, d)).astype(np.float32)

    def layout(prefix_len, gap, width, others):
        t = prefix_len + gap + width
        k = rng.standard_normal((1, g, t, d)).astype(np.float32)  # stale slots hold garbage
        v = rng.standard_normal((1, g, t, d)).astype(np.float32)
        k[0, :, :prefix_len] = keys[:prefix_len].transpose(1, 0, 2)
        v[0, :, :prefix_len] = vals[:prefix_len].transpose(1, 0, 2)
        tail = list(range(prefix_len, n))
        node_slots = sorted(rng.choice(width, size=len(tail), replace=False)) if tail else []
        slots = [prefix_len + gap + s for s in node_slots]
        for pos, s in zip(tail, slots):
            k[0, :, s], v[0, :, s] = keys[pos], vals[pos]
        qs = np.concatenate([q, rng.standard_normal((1, h, others, d)).astype(np.float32)], axis=2)
        extra = [slots] + [[prefix_len + gap] for _ in range(others)]
        ptr = np.concatenate([[0], np.cumsum([len(e) for e in extra])]).astype(np.int64)
        prefix = np.full((1, 1 + others), prefix_len, np.int64)
        out = _run(qs, k, v, prefix, ptr, np.array([s for e in extra for s in e], np.int64))
        return out[0, 0]

    ar = layout(n, 0, 0, 0)
    for prefix_len, gap, width, others in [(n - 1, 0, 1, 0), (15, 3, 12, 4), (5, 0, 30, 9), (1, 7, 40, 2)]:
        assert np.array_equal(layout(prefix_len, gap, width, others), ar)


@mkldnn
@pytest.mark.parametrize("shape", [(576, 1536), (1536, 576), (576, 576), (192, 576), (96, 64)])
def test_packed_linear_rows_do_not_depend_on_the_row_count(shape):
    out_f, in_f = shape
    gen = torch.Generator().manual_seed(out_f + in_f)
    lin = torch.nn.Linear(in_f, out_f, bias=False).to(torch.bfloat16)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(shape, generator=gen) * in_f**-0.5)
    packed = PackedLinear(lin)
    x = torch.randn(80, in_f, generator=gen).to(torch.bfloat16)
    full = packed(x)
    for m in range(1, 81):
        assert torch.equal(packed(x[:m]), full[:m]), f"{m} rows"
    torch.testing.assert_close(full.float(), lin(x).float(), rtol=2e-2, atol=2e-2)


def _tiny_bf16():
    model = make_tiny_llama(seed=3, vocab_size=128, layers=3, dtype=torch.bfloat16)
    make_invariant(model)
    return model


@mkldnn
def test_cache_keeps_the_transposed_keys_in_step():
    model = _tiny_bf16()
    cache = new_cache(model, 3, 12)
    assert isinstance(cache, InvariantKVCache)
    cache.storage.copy_(torch.randn(cache.storage.shape))
    cache.keys_t.copy_(cache.storage[:, 0].transpose(-1, -2))
    cache.end = 5
    cache.compact(np.array([2, 5, 1]), np.array([[0, 2, 4], [1, -1, -1], [3, 0, -1]]), np.array([2, 0, 1]))
    cache.select_rows(np.array([0, 2]))
    cache.ensure_capacity(30)
    assert cache.keys_t.shape[-1] == cache.capacity >= 30 and cache.keys_t.shape[1] == 2
    assert torch.equal(cache.keys_t[..., :5], cache.storage[:, 0, ..., :5, :].transpose(-1, -2))


def _prefill(model, prompt, capacity=64):
    cache = new_cache(model, 1, capacity)
    n = len(prompt)
    prefill_visibility(cache, 0, n, np.array([n]))
    model(
        input_ids=torch.tensor([prompt]),
        position_ids=torch.arange(n)[None],
        use_cache=True,
        **{cache_kwarg(model): cache},
    )
    cache.end = n
    return cache


def _tree_logits(model, cache, lens, tokens, parents):
    w = len(tokens)
    mask = np.zeros((1, w, w), bool)
    depth = np.zeros(w, np.int64)
    for i, p in enumerate(parents):
        mask[0, i] = mask[0, p] if p >= 0 else False
        mask[0, i, i] = True
        depth[i] = depth[p] + 1 if p >= 0 else 0
    end = cache.end
    out = model(
        input_ids=torch.tensor([tokens]),
        attention_mask=tree_pass_mask(cache, np.array([lens]), mask, torch.bfloat16, "cpu"),
        position_ids=torch.from_numpy(lens + depth)[None],
        use_cache=True,
        **{cache_kwarg(model): cache},
    )
    cache.end = end
    return out.logits[0]


@mkldnn
def test_a_nodes_logits_are_bitwise_its_autoregressive_logits():
    """Every node of a verified tree gets, bit for bit, the logits one-token passes give at
    its position after its path: the lossless property in bf16."""
    model = _tiny_bf16()
    prompt = [5, 17, 99, 3, 42, 8, 8, 1]
    tokens = [11, 12, 13, 14, 15, 16, 17, 18]
    parents = [-1, 0, 1, 0, 3, 4, 1, 6]  # two branches from the root, depth up to 4
    with torch.inference_mode():
        tree = _tree_logits(model, _prefill(model, prompt), len(prompt), tokens, parents)
        wide = _tree_logits(
            model, _prefill(model, prompt), len(prompt), tokens + list(range(40, 60)), parents + [0] * 20
        )
        for i in range(len(tokens)):
            path, j = [], i
            while j >= 0:
                path.append(tokens[j])
                j = parents[j]
            cache = _prefill(model, prompt)
            for k, tok in enumerate(reversed(path)):
                cache.end = len(prompt) + k
                ar = _tree_logits(model, cache, len(prompt) + k, [tok], [-1])
            assert torch.equal(ar[0], tree[i]), f"node {i}"
            assert torch.equal(wide[i], tree[i]), f"node {i} beside 20 more"


@mkldnn
def test_bf16_generation_is_lossless_on_the_tiny_model():
    from specplug.adapters.hf.config import GenerationConfig
    from specplug.adapters.hf.engine import HFEngine
    from specplug.drafters import registry

    model = make_tiny_llama(seed=4, vocab_size=96, layers=2, dtype=torch.bfloat16)
    make_invariant(model)
    engine = HFEngine(model, None, eos_token_ids=[], model_name="tiny-llama")
    rng = np.random.default_rng(0)
    base = [list(rng.integers(0, 96, 12)) for _ in range(4)]
    prompts = [p + p[:6] + p for p in base]  # repeats: the drafters find matches
    cfg = GenerationConfig(max_new_tokens=40)
    ar = [r.output_ids for r in engine.generate(prompts, registry.create("ar", 96), 1, cfg)]
    for name in ("pld", "suffix", "token-recycling", "racer"):
        got = engine.generate(prompts, registry.create(name, 96), 12, cfg)
        assert [r.output_ids for r in got] == ar, name
        assert sum(r.steps for r in got) < sum(len(a) for a in ar), f"{name} never accepted a draft"


def test_dtype_auto_follows_the_cpu_flags(monkeypatch):
    from specplug.adapters.hf import precision

    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: ("avx512_bf16",))
    assert resolve_dtype("auto") is torch.bfloat16
    assert resolve_dtype("auto", "cuda") is torch.float32
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: ())
    assert resolve_dtype("auto") is torch.float32
    assert resolve_dtype("bf16") is torch.bfloat16 and resolve_dtype("fp32") is torch.float32
    with pytest.raises(Exception, match="unknown dtype"):
        resolve_dtype("int8")


def test_invariant_kernels_name_what_they_do_not_cover():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50))
    assert "gpt2" in invariant_supported(gpt2)
    with pytest.raises(ValueError, match="not available"):
        make_invariant(gpt2)


def test_engine_load_picks_bf16_only_where_it_is_lossless(monkeypatch):
    from transformers import GPT2Config, GPT2LMHeadModel

    from specplug.adapters.hf import engine as engine_mod
    from specplug.adapters.hf import precision
    from specplug.adapters.hf.invariant import is_invariant
    from specplug.drafters.errors import ConfigError

    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: ("avx512_bf16",))

    def fake_load(kind):
        def load(path, dtype=None):
            if kind == "llama":
                model = make_tiny_llama(seed=5, dtype=torch.float32)
            else:
                model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50)).eval()
            return model.to(dtype), None

        return load

    monkeypatch.setattr(engine_mod, "load_model", fake_load("llama"))
    eng = engine_mod.HFEngine.load(dtype="auto")
    assert eng.dtype is torch.bfloat16 and is_invariant(eng.model)
    assert engine_mod.HFEngine.load(dtype="fp32").dtype is torch.float32
    monkeypatch.setattr(engine_mod, "load_model", fake_load("gpt2"))
    assert engine_mod.HFEngine.load(dtype="auto").dtype is torch.float32  # not covered: fp32
    with pytest.raises(ConfigError, match="--dtype fp32"):
        engine_mod.HFEngine.load(dtype="bf16")
