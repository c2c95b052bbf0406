"""Early-exit self-speculation (del, early-exit) on the embedded engine with the default model.

* Lossless: greedy output token-identical to AR on 30 real prompts (fixed exit layer that
  drafts every step; DEL on the real model; DEL on a model whose late layers are damped so
  that early exits agree often and DEL does speculate).
* KV: after drafted-then-verified steps the committed cache equals a plain full-model prefill.
* Shadow tokens (verification and prompt seed) equal a direct per-layer computation.
* Bad configurations: exit layer out of range, a model without the needed structure.
* Tiny Qwen2 and Gemma models: the runner works for those families too (lossless).
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from specplug.adapters.hf.config import GenerationConfig
from specplug.adapters.hf.decode import DecodeBatch
from specplug.adapters.hf.kv import TreeKVCache
from specplug.drafters import registry
from specplug.drafters.errors import ConfigError

NEW = 12


@pytest.fixture(scope="module")
def prompts(default_engine, real_prompts):
    ids = real_prompts(default_engine, 17)  # 51: the lossless checks cover 50+ real prompts
    assert len(ids) >= 30
    return ids


def _generate(engine, prompts, name, budget, options=None, batch=10, drafter=None):
    drafter = drafter or registry.create(name, engine.vocab_size, options)
    cfg = GenerationConfig(max_new_tokens=NEW)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out = [None] * len(prompts)
    for i in range(0, len(order), batch):
        idx = order[i : i + batch]
        for j, r in zip(idx, engine.generate([prompts[j] for j in idx], drafter, budget, cfg)):
            out[j] = r.output_ids
    assert drafter.active_requests() == 0
    return out, drafter


@pytest.fixture(scope="module")
def ar_outputs(default_engine, prompts):
    return _generate(default_engine, prompts, "ar", 1)[0]


def test_fixed_exit_lossless(default_engine, prompts, ar_outputs):
    out, d = _generate(default_engine, prompts, "early-exit", 5, {"exit_layer": 24, "draft_len": 4})
    for i, (a, b) in enumerate(zip(out, ar_outputs)):
        assert a == b, f"early-exit: prompt {i} differs from autoregressive decoding"
    rep = d.bench_report()
    assert rep["speculative_steps"] > 0.8 * rep["steps"] and rep["exit_layer_counts"].keys() == {24}


def test_del_lossless_and_declines_on_smollm2(default_engine, prompts, ar_outputs):
    """On SmolLM2-135M no exit layer agrees often enough to pay on the CPU: DEL must not speculate."""
    out, d = _generate(default_engine, prompts, "del", 19)
    assert out == ar_outputs
    rep = d.bench_report()
    assert rep["speculative_steps"] == 0
    assert max(rep["alpha"].values()) < 0.6
    assert 0 < rep["probe_cost_fraction"] < 0.1


@pytest.fixture(scope="module")
def damped_engine():
    """The default model with its last 9 layers switched off (residual writes zeroed): the final
    hidden state is the one after 21 layers, so exits at 22+ always agree and exit 20 often."""
    from specplug.adapters.hf.engine import HFEngine

    eng = HFEngine.load()
    with torch.no_grad():
        for layer in eng.model.model.layers[21:]:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    return eng


def test_del_speculates_where_agreement_allows_and_is_lossless(damped_engine, prompts):
    prompts = prompts[::3]
    ref, _ = _generate(damped_engine, prompts, "ar", 1)
    out, d = _generate(damped_engine, prompts, "del", 19)
    for i, (a, b) in enumerate(zip(out, ref)):
        assert a == b, f"del: prompt {i} differs from autoregressive decoding (damped model)"
    rep = d.bench_report()
    assert rep["speculative_steps"] > 0.5 * rep["steps"], rep
    assert set(rep["exit_layer_counts"]) <= {20, 22, 24}
    mat = sum(map(len, out)) / rep["steps"]
    assert mat > 2.0
    assert rep["alpha"][22] == 1.0 and rep["alpha"][24] == 1.0 and rep["alpha"][20] < 1.0


def _drive(engine, ids, drafter, budget, steps):
    batch = DecodeBatch(engine, [ids], drafter, budget, GenerationConfig(max_new_tokens=64), time.perf_counter())
    return batch


def _reference_hidden(engine, seq):
    with torch.inference_mode():
        return engine.model(input_ids=torch.tensor([seq]), output_hidden_states=True)


def test_drafted_then_verified_kv_equals_full_model_kv(default_engine_fp32, prompts):
    # compared with direct forward passes of the model: the library (fp32) kernels
    eng = default_engine_fp32
    ids = prompts[3]
    d = registry.create("early-exit", eng.vocab_size, {"exit_layer": 18, "draft_len": 5})
    with torch.inference_mode():
        b = _drive(eng, ids, d, 6, 0)
        try:
            b.prefill()
            for _ in range(6):
                b.step()
            n = int(b.lens[0])
            seq = ids + b.outputs[0]
            assert n == len(seq) - 1  # every committed token but the root has KV
            ref = TreeKVCache.for_model(eng.model, 1, n + 8)
            eng.model(input_ids=torch.tensor([seq[:n]]), past_key_values=ref, use_cache=True)
            got = b.cache.storage[:, :, 0, :, :n]
            want = ref.storage[:, :, 0, :, :n]
            assert torch.allclose(got, want, atol=2e-4, rtol=1e-4), float((got - want).abs().max())
            assert sum(b.accepted[0][1:]) > 6  # drafts were accepted (KV moved by compaction)
        finally:
            b.close()


def test_shadow_tokens_equal_direct_per_layer_computation(default_engine_fp32, prompts):
    # compared with direct forward passes of the model: the library (fp32) kernels
    eng = default_engine_fp32
    ids = prompts[5]
    layers = [6, 15, 27]
    d = registry.create(
        "del",
        eng.vocab_size,
        {"candidate_layers": ",".join(map(str, layers)), "probe_budget": 1.0, "min_gain": 10.0, "seed_tokens": 8},
    )
    seen, seeds = [], []
    with torch.inference_mode():
        b = _drive(eng, ids, d, 19, 0)
        run = b.runner
        orig_shadow, orig_seed = run.shadow, run.prompt_shadow
        run.shadow = lambda rid: seen.append((len(b.outputs[0]), orig_shadow(rid))) or seen[-1][1]
        run.prompt_shadow = lambda rid: seeds.append(orig_seed(rid)) or seeds[-1]
        try:
            b.prefill()
            for _ in range(8):
                b.step()
            seq = ids + b.outputs[0]
        finally:
            b.close()
    assert len(seen) >= 6 and len(seeds) == 1 and seeds[0] is not None
    out = _reference_hidden(eng, seq)
    hs = out.hidden_states
    norm, head = eng.model.model.norm, eng.model.lm_head

    def direct(pos):
        with torch.inference_mode():
            h = torch.stack([hs[l][0, pos] for l in layers])
            logits = head(norm(h)).float()
            p = torch.softmax(logits, -1)
            return logits.argmax(-1).numpy(), p.max(-1).values.numpy()

    for n_out, sh in seen:  # AR steps: one committed position, the root's
        assert sh is not None and sh.tokens.shape == (3, 1)
        pos = np.array([len(ids) + n_out - 2])  # the root when the step ran (one token was committed)
        tok, prob = direct(pos)
        np.testing.assert_array_equal(sh.tokens, tok)
        np.testing.assert_allclose(sh.probs, prob, atol=1e-4)
        assert sh.final[0] == seq[pos[0] + 1]
    pos = np.arange(len(ids) - 8, len(ids))
    tok, prob = direct(pos)
    np.testing.assert_array_equal(seeds[0].tokens, tok)
    np.testing.assert_allclose(seeds[0].probs, prob, atol=1e-4)
    np.testing.assert_array_equal(seeds[0].final, out.logits[0, pos].argmax(-1).numpy())


def test_draft_tokens_equal_a_truncated_forward(default_engine_fp32, prompts):
    # compared with direct forward passes of the model: the library (fp32) kernels
    """The runner's draft at exit E is the argmax of norm + head after E layers of the full model."""
    eng = default_engine_fp32
    ids = prompts[7]
    d = registry.create("early-exit", eng.vocab_size, {"exit_layer": 12, "draft_len": 3})
    calls = []
    with torch.inference_mode():
        b = _drive(eng, ids, d, 4, 0)
        orig = b.runner.draft

        def rec(rids, tokens, step, exits):
            r = orig(rids, tokens, step, exits)
            calls.append((len(b.outputs[0]), int(step), np.array(tokens), r))
            return r

        b.runner.draft = rec
        try:
            b.prefill()
            b.step()
        finally:
            b.close()
    assert [c[1] for c in calls] == [0, 1, 2]
    seq = ids + b.outputs[0][:1]  # committed before the step (prompt + first token = root)
    drafts = [int(c[3][0][0]) for c in calls]
    full = seq + drafts[:2]
    hs = _reference_hidden(eng, full).hidden_states
    with torch.inference_mode():
        logits = eng.model.lm_head(eng.model.model.norm(hs[12][0, len(seq) - 1 :]))
    assert logits.argmax(-1).tolist() == drafts
    np.testing.assert_allclose(
        [float(c[3][1][0]) for c in calls], torch.softmax(logits.float(), -1).max(-1).values.numpy(), atol=1e-4
    )


def test_bad_configurations(default_engine):
    eng = default_engine
    ids = eng.encode(prompt="def f(x):")
    with pytest.raises(ConfigError, match=r"exit_layer=30 is out of range .* 30 decoder layers: use 1..29"):
        eng.generate([ids], registry.create("early-exit", eng.vocab_size, {"exit_layer": 30}), 5)
    with pytest.raises(ConfigError, match=r"candidate_layers \[31\] out of range"):
        eng.generate([ids], registry.create("del", eng.vocab_size, {"candidate_layers": "20,31"}), 5)
    from transformers import GPT2Config, GPT2LMHeadModel

    from specplug.adapters.hf.engine import HFEngine

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=96, n_embd=32, n_layer=2, n_head=2, n_positions=64)).eval()
    with pytest.raises(ConfigError, match="model.model.layers, model.model.norm and an LM head"):
        HFEngine(gpt2, None, eos_token_ids=[]).generate([[1, 2, 3]], registry.create("del", 96), 5)


def _tiny(family):
    torch.manual_seed(0)
    common = dict(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    if family == "qwen2":
        from transformers import Qwen2Config, Qwen2ForCausalLM

        m = Qwen2ForCausalLM(Qwen2Config(**common))
    else:
        from transformers import GemmaConfig, GemmaForCausalLM

        m = GemmaForCausalLM(GemmaConfig(head_dim=8, **common))
    m.config._attn_implementation = "sdpa"
    return m.to(torch.float64).eval()


@pytest.mark.parametrize("family", ["qwen2", "gemma"])
def test_tiny_families_lossless(family):
    from specplug.adapters.hf.engine import HFEngine

    eng = HFEngine(_tiny(family), None, eos_token_ids=[], model_name=family)
    rng = np.random.default_rng(0)
    ps = [rng.integers(0, 64, size=int(n)).tolist() for n in (5, 9, 13, 7)]
    cfg = GenerationConfig(max_new_tokens=20)
    ref = [r.output_ids for r in eng.generate(ps, registry.create("ar", 64), 1, cfg)]
    for name, opts in (
        ("early-exit", {"exit_layer": 2, "draft_len": 3}),
        ("del", {"candidate_layers": "1,2", "cost": "layers", "min_gain": 0.0, "probe_budget": 1.0}),
    ):
        d = registry.create(name, 64, opts)
        assert [r.output_ids for r in eng.generate(ps, d, 8, cfg)] == ref, name
        assert d.active_requests() == 0
