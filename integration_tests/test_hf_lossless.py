"""The embedded engine is lossless: greedy speculative output is token-identical to
autoregressive decoding, stops exactly, compacts the KV cache correctly and never leaves
drafter state behind.

Two models: a tiny random Llama in float64 (fast, many cases, no near-ties), and the
default SmolLM2-135M-Instruct in the default dtype (bf16 on the batch-invariant kernels
where the CPU has native bf16; ``test_bf16_lossless.py`` covers it on 50+ prompts per
algorithm) on real prompts, and in fp32 against transformers' own ``generate``. fp32 could in principle flip a
near-tie between differently shaped forward passes (batch 1 vs batched, 1 query vs a tree);
should that ever happen, run the default-model comparisons in float64
(``HFEngine.load(dtype=torch.float64)``) rather than loosening the check.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from transformers import DynamicCache

from specplug.adapters.hf.config import GenerationConfig
from specplug.adapters.hf.decode import DecodeBatch
from specplug.drafters import registry
from specplug.drafters.base import ContextDrafter
from specplug.drafters.errors import ConfigError
from specplug.drafters.tree import DraftTree

MAX_NEW = 24

# ------------------------------------------------------------------ prompts
CHAT = [
    "What is the capital of France?",
    "Write a Python function that reverses a string.",
    "List the days of the week.",
    "Explain what a hash table is in two sentences.",
    "What is 15 times 12? Show your work.",
    "Count from 1 to 20, separated by commas.",
    "Write a haiku about the sea.",
    "Translate 'good morning' into Spanish, French and German.",
    "Give three tips for writing clean code.",
    "Write a SQL query that selects all users older than 30.",
    "Repeat this sentence three times: the quick brown fox jumps over the lazy dog.",
    "What does HTTP stand for?",
]
PLAIN = [
    'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n',
    "import numpy as np\n\ndef normalize(x):\n",
    "The cat sat on the mat. The cat sat on the mat. The cat sat on the",
    "1, 2, 3, 4, 5, 6, 7, 8,",
    "Once upon a time, in a small village,",
    "Question: If a train travels 60 miles per hour for 3 hours, how far does it go?\nAnswer:",
    "for i in range(10):\n    print(i)\nfor j in range(10):\n",
    "Monday, Tuesday, Wednesday,",
    "<html>\n<head>\n<title>My page</title>\n</head>\n<body>\n",
    "The mitochondria is",
    "a b c d e f g h i j k l m n o p",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n",
]


@pytest.fixture(scope="module")
def prompts(default_engine):
    ids = [default_engine.encode(messages=[{"role": "user", "content": m}]) for m in CHAT]
    ids += [default_engine.encode(prompt=p) for p in PLAIN]
    assert len(ids) >= 24
    return ids


@pytest.fixture(scope="module")
def ar_reference(default_engine, prompts):
    """AR (budget 1) at batch 1 through the engine: the ground truth of this module."""
    ar = registry.create("ar", default_engine.vocab_size)
    cfg = GenerationConfig(max_new_tokens=MAX_NEW)
    out = [default_engine.generate([p], ar, 1, cfg)[0] for p in prompts]
    assert ar.active_requests() == 0
    return out


def _run(engine, prompts, name, budget, cfg, batch_size):
    drafter = registry.create(name, engine.vocab_size)
    out = []
    for s in range(0, len(prompts), batch_size):
        out += engine.generate(prompts[s : s + batch_size], drafter, budget, cfg)
    assert drafter.active_requests() == 0
    return out


def _mismatches(results, reference):
    return [i for i, (r, a) in enumerate(zip(results, reference)) if r.output_ids != a.output_ids]


# ------------------------------------------------------------------ default model
def test_ar_matches_transformers_generate(default_engine_fp32, prompts):
    """fp32 on the library kernels: the engine's AR is transformers' own greedy decoding.
    (The bf16 default runs other kernels; there AR is the reference, see test_bf16_lossless.)"""
    engine = default_engine_fp32
    model = engine.model
    cfg = GenerationConfig(max_new_tokens=MAX_NEW)
    for i in (0, 1, 12, 14):
        p = prompts[i]
        ours = engine.generate([p], registry.create("ar", engine.vocab_size), 1, cfg)[0].output_ids
        with torch.inference_mode():
            ref = model.generate(
                torch.tensor([p]),
                attention_mask=torch.ones(1, len(p), dtype=torch.long),
                max_new_tokens=MAX_NEW,
                do_sample=False,
                pad_token_id=0,
            )[0, len(p) :].tolist()
        assert ours == ref, i


def test_ar_accounting(ar_reference, default_engine):
    for r in ar_reference:
        assert r.steps == len(r.output_ids) and r.mat == 1.0
        assert r.accepted_per_step == [1] * len(r.output_ids)
        assert r.finish_reason in ("eos", "length")
        if r.finish_reason == "length":
            assert len(r.output_ids) == MAX_NEW
        else:
            assert r.output_ids[-1] in default_engine.eos_token_ids


@pytest.mark.parametrize("batch_size", [1, 4])
def test_pld_lossless(default_engine, prompts, ar_reference, batch_size):
    cfg = GenerationConfig(max_new_tokens=MAX_NEW)
    res = _run(default_engine, prompts, "pld", registry.get("pld").default_budget, cfg, batch_size)
    assert _mismatches(res, ar_reference) == []
    assert [r.finish_reason for r in res] == [a.finish_reason for a in ar_reference]
    for r in res:
        assert sum(r.accepted_per_step) == len(r.output_ids) and len(r.accepted_per_step) == r.steps
    # speculation must actually happen, or this test proves nothing
    assert sum(len(r.output_ids) for r in res) > sum(r.steps for r in res) * 1.1


def test_ar_batched_matches_batch_one(default_engine, prompts, ar_reference):
    res = _run(default_engine, prompts[:8], "ar", 1, GenerationConfig(max_new_tokens=MAX_NEW), 4)
    assert _mismatches(res, ar_reference[:8]) == []


def test_eos_is_honoured_on_the_default_model(default_engine, prompts, ar_reference):
    i = next(i for i, r in enumerate(ar_reference) if r.finish_reason == "eos")
    [r] = _run(default_engine, [prompts[i]], "pld", 11, GenerationConfig(max_new_tokens=MAX_NEW), 1)
    assert r.output_ids == ar_reference[i].output_ids and r.finish_reason == "eos"


def test_stop_token_cuts_speculated_output(default_engine, prompts, ar_reference):
    # a prompt where PLD accepts several tokens at once, stopped in the middle of the output
    i = PLAIN.index("The cat sat on the mat. The cat sat on the mat. The cat sat on the") + len(CHAT)
    ref = ar_reference[i].output_ids
    j = len(ref) // 2
    first = ref.index(ref[j])
    cfg = GenerationConfig(max_new_tokens=MAX_NEW, stop_token_ids=(ref[j],))
    [r] = _run(default_engine, [prompts[i]], "pld", 11, cfg, 1)
    assert r.output_ids == ref[: first + 1] and r.finish_reason == "stop"


# ------------------------------------------------------------------ tiny random Llama
class OracleTreeDrafter(ContextDrafter):
    """Knows the reference continuations; proposes random trees that hide a (randomly
    truncated, sometimes corrupted) copy of the true continuation among decoy branches,
    at scattered node indices. Exercises tree masks, positions and KV compaction."""

    name = "oracle-tree"

    def __init__(self, vocab_size, references, seed=0):
        super().__init__(vocab_size)
        self.references = [list(r) for r in references]
        self.rng = np.random.default_rng(seed)

    def _truth(self, ctx):
        n = len(ctx)
        for ref in self.references:
            if len(ref) >= n and ref[:n] == ctx:
                return ref[n:]
        raise AssertionError("context matches no reference")

    def propose(self, rids, budgets):
        return [self._tree(self.context(rid).tolist(), int(b)) for rid, b in zip(rids, budgets)]

    def _tree(self, ctx, budget):
        rng, v = self.rng, self.vocab_size
        truth = self._truth(ctx)
        depth = int(rng.integers(0, min(len(truth), budget - 1) + 1))
        path = list(truth[:depth])
        if path and rng.random() < 0.3:  # a wrong guess: rejected there
            path[-1] = (path[-1] + 1 + int(rng.integers(v - 1))) % v
        tokens, parents, on_path = [ctx[-1]], [-1], [0]
        children: dict[int, set] = {0: set()}
        size = int(rng.integers(len(path) + 1, budget + 1))
        while len(tokens) < size:
            grow_path = len(on_path) <= len(path) and (
                rng.random() < 0.5 or size - len(tokens) <= len(path) - len(on_path) + 1
            )
            if grow_path:
                parent, tok = on_path[-1], path[len(on_path) - 1]
            else:
                parent = int(rng.integers(len(tokens)))
                banned = children[parent] | (
                    {path[on_path.index(parent)]} if parent in on_path and on_path.index(parent) < len(path) else set()
                )
                tok = int(rng.integers(v))
                if tok in banned:
                    continue
            if tok in children[parent]:
                continue
            children[parent].add(tok)
            children[len(tokens)] = set()
            if grow_path:
                on_path.append(len(tokens))
            tokens.append(tok)
            parents.append(parent)
        return DraftTree(tokens, parents, rng.random(len(tokens)).astype(np.float32))


def _tiny_prompts(vocab=96, n=5, seed=1):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        base = rng.integers(3, vocab, size=int(rng.integers(2, 7))).tolist()
        out.append((base * 6)[: int(rng.integers(4, 30))])  # repetitive: PLD finds matches
    return out


def _ar(engine, prompts, cfg):
    ar = registry.create("ar", engine.vocab_size)
    return [engine.generate([p], ar, 1, cfg)[0] for p in prompts]


def test_tiny_ar_matches_transformers_generate(make_tiny):
    eng = make_tiny()
    cfg = GenerationConfig(max_new_tokens=24)
    prompts = _tiny_prompts()
    for p, r in zip(prompts, _ar(eng, prompts, cfg)):
        ref = eng.model.generate(
            torch.tensor([p]),
            attention_mask=torch.ones(1, len(p), dtype=torch.long),
            max_new_tokens=24,
            do_sample=False,
        )[0, len(p) :].tolist()
        assert r.output_ids == ref


@pytest.mark.parametrize("batch_size", [1, 3, 5])
@pytest.mark.parametrize("budget", [2, 7, 24])
def test_tiny_tree_drafts_are_lossless(make_tiny, batch_size, budget):
    eng = make_tiny()
    cfg = GenerationConfig(max_new_tokens=30)
    prompts = _tiny_prompts()
    ref = _ar(eng, prompts, cfg)
    drafter = OracleTreeDrafter(eng.vocab_size, [p + r.output_ids for p, r in zip(prompts, ref)], seed=budget)
    res = []
    for s in range(0, len(prompts), batch_size):
        res += eng.generate(prompts[s : s + batch_size], drafter, budget, cfg)
    assert [r.output_ids for r in res] == [r.output_ids for r in ref]
    assert drafter.active_requests() == 0
    assert max(max(r.accepted_per_step) for r in res) > 1


@pytest.mark.parametrize("batch_size", [1, 4])
def test_tiny_pld_lossless(make_tiny, batch_size):
    eng = make_tiny(seed=3)
    cfg = GenerationConfig(max_new_tokens=40)
    prompts = _tiny_prompts(n=8, seed=5)
    ref = _ar(eng, prompts, cfg)
    drafter = registry.create("pld", eng.vocab_size)
    res = []
    for s in range(0, len(prompts), batch_size):
        res += eng.generate(prompts[s : s + batch_size], drafter, 11, cfg)
    assert [r.output_ids for r in res] == [r.output_ids for r in ref]
    assert drafter.active_requests() == 0


def test_kv_compaction_equals_plain_forward(make_tiny):
    """After speculative steps, each row's cached K/V equals a plain forward's over the
    same committed tokens (ragged rows, scattered accepted nodes)."""
    eng = make_tiny(seed=2)
    cfg = GenerationConfig(max_new_tokens=40)
    prompts = _tiny_prompts(n=4, seed=7)
    ref = _ar(eng, prompts, cfg)
    drafter = OracleTreeDrafter(eng.vocab_size, [p + r.output_ids for p, r in zip(prompts, ref)], seed=11)
    with torch.inference_mode():
        batch = DecodeBatch(eng, prompts, drafter, 16, cfg, time.perf_counter())
        try:
            batch.prefill()
            for _ in range(3):
                batch.step()
            assert len(batch.active) >= 2  # ragged rows still in the batch
            assert max(max(a) for a in batch.accepted) > 1
            for row, i in enumerate(batch.active):
                committed = prompts[i] + batch.outputs[i][:-1]
                assert batch.lens[row] == len(committed)
                dc = DynamicCache(config=eng.model.config)
                eng.model(input_ids=torch.tensor([committed]), past_key_values=dc, use_cache=True)
                for layer in range(eng.model.config.num_hidden_layers):
                    k, v = batch.cache.row_kv(layer, row, len(committed))
                    torch.testing.assert_close(k, dc.layers[layer].keys[0], atol=1e-10, rtol=0)
                    torch.testing.assert_close(v, dc.layers[layer].values[0], atol=1e-10, rtol=0)
        finally:
            batch.close()
    assert drafter.active_requests() == 0


def test_cache_growth_keeps_output_identical(make_tiny, monkeypatch):
    eng = make_tiny(seed=3)
    prompts = _tiny_prompts(n=3, seed=5)
    cfg = GenerationConfig(max_new_tokens=60)
    ref = _ar(eng, prompts, cfg)
    monkeypatch.setattr(DecodeBatch, "INITIAL_ROOM", 2)  # forces several doublings
    res = eng.generate(prompts, registry.create("pld", eng.vocab_size), 11, cfg)
    assert [r.output_ids for r in res] == [r.output_ids for r in ref]


def test_chunked_prefill_matches_one_pass(make_tiny, monkeypatch):
    eng = make_tiny(seed=4)
    prompts = _tiny_prompts(n=3, seed=9)
    cfg = GenerationConfig(max_new_tokens=8)
    ref = _ar(eng, prompts, cfg)
    one = TopkRecorder(eng.vocab_size)
    eng.generate(prompts, one, 3, cfg)
    monkeypatch.setattr(DecodeBatch, "PREFILL_CHUNK", 4)  # ragged rows end in different chunks
    res = eng.generate(prompts, registry.create("pld", eng.vocab_size), 11, cfg)
    assert [r.output_ids for r in res] == [r.output_ids for r in ref]
    chunked = TopkRecorder(eng.vocab_size)
    eng.generate(prompts, chunked, 3, cfg)
    for (ctx_a, k_a), (ctx_b, k_b) in zip(one.context_topk.values(), chunked.context_topk.values()):
        assert ctx_a == ctx_b
        np.testing.assert_array_equal(k_a.ids, k_b.ids)


def test_encode_checks_prompts(default_engine):
    ids = default_engine.encode(messages=[{"role": "user", "content": "Hi"}])
    assert ids == default_engine.encode(
        prompt=default_engine.tokenizer.apply_chat_template(
            [{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False
        )
    )
    for kwargs, match in [
        (dict(prompt="  "), "empty"),
        (dict(messages=[]), "messages"),
        (dict(messages=[{"role": "user", "content": ""}]), "messages"),
        (dict(), "either"),
        (dict(prompt="a", messages=[]), "either"),
        (dict(prompt="word " * 9000), "context"),
    ]:
        with pytest.raises(ConfigError, match=match):
            default_engine.encode(**kwargs)


# ------------------------------------------------------------------ exact stopping
@pytest.mark.parametrize("limit", [1, 2, 5, 13])
def test_max_new_tokens_is_exact(make_tiny, limit):
    eng = make_tiny(seed=3)
    prompts = _tiny_prompts(n=4, seed=5)
    full = _ar(eng, prompts, GenerationConfig(max_new_tokens=40))
    drafter = registry.create("pld", eng.vocab_size)
    res = eng.generate(prompts, drafter, 24, GenerationConfig(max_new_tokens=limit))
    for r, f in zip(res, full):
        assert r.output_ids == f.output_ids[:limit] and r.finish_reason == "length"
        assert sum(r.accepted_per_step) == limit
    assert drafter.active_requests() == 0


def test_stop_and_eos_tokens_cut_exactly(make_tiny):
    eng = make_tiny(seed=3)
    prompts = _tiny_prompts(n=4, seed=5)
    full = _ar(eng, prompts, GenerationConfig(max_new_tokens=40))
    for reason in ("stop", "eos"):
        for p, f in zip(prompts, full):
            out = f.output_ids
            stop = out[len(out) // 2]
            first = out.index(stop)
            if reason == "stop":
                e, cfg = eng, GenerationConfig(max_new_tokens=40, stop_token_ids=(stop,))
            else:
                e, cfg = make_tiny(seed=3, eos_token_ids=[stop]), GenerationConfig(max_new_tokens=40)
            drafter = registry.create("pld", e.vocab_size)
            [r] = e.generate([p], drafter, 24, cfg)
            assert r.output_ids == out[: first + 1] and r.finish_reason == reason
            assert drafter.active_requests() == 0


def test_stop_at_the_first_token_never_starts_the_drafter(make_tiny):
    eng = make_tiny(seed=3)
    p = _tiny_prompts(n=1, seed=5)[0]
    [f] = _ar(eng, [p], GenerationConfig(max_new_tokens=4))
    drafter = registry.create("pld", eng.vocab_size)
    [r] = eng.generate([p], drafter, 11, GenerationConfig(max_new_tokens=40, stop_token_ids=(f.output_ids[0],)))
    assert r.output_ids == f.output_ids[:1] and r.steps == 1 and r.finish_reason == "stop"
    assert drafter.active_requests() == 0


def test_context_limit_ends_generation(make_tiny):
    eng = make_tiny(seed=3)  # max_position_embeddings = 256
    p = _tiny_prompts(n=1, seed=5)[0] * 30
    p = p[: eng.max_context - 5]
    [r] = eng.generate([p], registry.create("pld", eng.vocab_size), 24, GenerationConfig(max_new_tokens=40))
    assert len(r.output_ids) == 5 and r.finish_reason == "length"
    with pytest.raises(ConfigError, match="context"):
        eng.generate([p + [3] * 5], registry.create("ar", eng.vocab_size), 1, GenerationConfig())


# ------------------------------------------------------------------ no state left behind
class Failing(ContextDrafter):
    """Wraps PLD; raises from propose/observe on a chosen call."""

    name = "failing"

    def __init__(self, vocab_size, where, after):
        super().__init__(vocab_size)
        self.inner = registry.create("pld", vocab_size)
        self.where, self.after, self.calls = where, after, 0

    def start(self, rid, context_ids, context_topk=None):
        super().start(rid, context_ids)
        self.inner.start(rid, context_ids)

    def _tick(self, where):
        if where == self.where:
            self.calls += 1
            if self.calls > self.after:
                raise RuntimeError(f"boom in {where}")

    def propose(self, rids, budgets):
        self._tick("propose")
        return self.inner.propose(rids, budgets)

    def observe(self, rid, tree, accepted, target_topk=None):
        self._tick("observe")
        super().observe(rid, tree, accepted)
        self.inner.observe(rid, tree, accepted)

    def finish(self, rid):
        super().finish(rid)
        self.inner.finish(rid)


@pytest.mark.parametrize("where,after", [("propose", 0), ("propose", 3), ("observe", 5)])
def test_a_failing_drafter_costs_speed_never_output(make_tiny, where, after, caplog):
    """The session logs a drafter's exception, restarts its requests and verifies their
    roots that step: the batch goes on, the output is AR's, and no state is left."""
    eng = make_tiny(seed=3)
    prompts = _tiny_prompts(n=3, seed=5)
    cfg = GenerationConfig(max_new_tokens=40)
    ar = eng.generate(prompts, registry.create("ar", eng.vocab_size), 1, cfg)
    drafter = Failing(eng.vocab_size, where, after)
    out = eng.generate(prompts, drafter, 11, cfg)
    assert [r.output_ids for r in out] == [r.output_ids for r in ar]
    assert f"boom in {where}" in caplog.text
    assert drafter.active_requests() == 0 and drafter.inner.active_requests() == 0


def test_no_state_left_after_a_model_error(make_tiny, monkeypatch):
    eng = make_tiny(seed=3)
    drafter = registry.create("pld", eng.vocab_size)
    calls = {"n": 0}
    real = eng.model.forward

    def flaky(*a, **kw):
        calls["n"] += 1
        if calls["n"] > 3:
            raise RuntimeError("model exploded")
        return real(*a, **kw)

    monkeypatch.setattr(eng.model, "forward", flaky)
    with pytest.raises(RuntimeError, match="exploded"):
        eng.generate(_tiny_prompts(n=3, seed=5), drafter, 11, GenerationConfig(max_new_tokens=40))
    assert drafter.active_requests() == 0


class BadTrees(ContextDrafter):
    name = "bad-trees"

    def __init__(self, vocab_size, kind):
        super().__init__(vocab_size)
        self.kind = kind

    def propose(self, rids, budgets):
        out = []
        for rid, b in zip(rids, budgets):
            root = int(self.context(rid)[-1])
            if self.kind == "root":
                out.append(DraftTree.chain((root + 1) % self.vocab_size, [1]))
            elif self.kind == "budget":
                out.append(DraftTree.chain(root, list(range(3, 3 + b))))
            else:
                out.append(DraftTree.chain(root, [self.vocab_size + 5], None))
        return out


@pytest.mark.parametrize("kind,match", [("root", "root"), ("budget", "budget"), ("vocab", r"outside \[0, ")])
def test_bad_trees_are_replaced_by_their_root(make_tiny, kind, match, caplog):
    """A tree breaking the contract is logged and verified as its root alone: output = AR."""
    eng = make_tiny(seed=3)
    prompts = _tiny_prompts(n=2, seed=5)
    cfg = GenerationConfig(max_new_tokens=10)
    ar = eng.generate(prompts, registry.create("ar", eng.vocab_size), 1, cfg)
    drafter = BadTrees(eng.vocab_size, kind)
    out = eng.generate(prompts, drafter, 8, cfg)
    assert [r.output_ids for r in out] == [r.output_ids for r in ar]
    assert "broken tree" in caplog.text and any(__import__("re").search(match, m) for m in caplog.messages)
    assert drafter.active_requests() == 0


def test_bad_arguments_raise_config_errors(make_tiny):
    eng = make_tiny()
    ar = registry.create("ar", eng.vocab_size)
    p = _tiny_prompts(n=1)[0]
    for kwargs, match in [
        (dict(prompts=[p], budget=0), "budget"),
        (dict(prompts=[p], budget=2000), "budget"),
        (dict(prompts=[[]], budget=1), "empty"),
        (dict(prompts=[[eng.vocab_size]], budget=1), "token ids"),
        (dict(prompts=[], budget=1), "at least one"),
        (dict(prompts=[p], budget=1, config=GenerationConfig(max_new_tokens=0)), "max_new_tokens"),
        (dict(prompts=[p], budget=1, config=GenerationConfig(stop_token_ids=(10**6,))), "stop_token_ids"),
    ]:
        with pytest.raises(ConfigError, match=match):
            eng.generate(drafter=ar, **{"config": GenerationConfig(), **kwargs})
    assert ar.active_requests() == 0


# ------------------------------------------------------------------ logit feedback
class TopkRecorder(ContextDrafter):
    """Records the engine's context_topk / target_topk to check them against the logits."""

    name = "topk-recorder"
    uses_target_topk = True
    topk = 8

    def __init__(self, vocab_size):
        super().__init__(vocab_size)
        self.context_topk, self.seen = {}, []

    def start(self, rid, context_ids, context_topk=None):
        super().start(rid, context_ids)
        self.context_topk[rid] = (list(context_ids), context_topk)

    def propose(self, rids, budgets):
        return [DraftTree.chain(int(self.context(r)[-1]), [5, 6][: b - 1]) for r, b in zip(rids, budgets)]

    def observe(self, rid, tree, accepted, target_topk=None):
        ctx = self.context(rid).tolist()
        self.seen.append((ctx, tree, target_topk))
        super().observe(rid, tree, accepted)


def test_topk_feedback_matches_the_logits(make_tiny):
    eng = make_tiny(seed=4)
    prompts = _tiny_prompts(n=2, seed=9)
    rec = TopkRecorder(eng.vocab_size)
    eng.generate(prompts, rec, 3, GenerationConfig(max_new_tokens=6))
    with torch.inference_mode():
        for ctx, topk in rec.context_topk.values():
            assert topk.ids.shape == (len(ctx) - 1, 8) and topk.probs is None
            logits = eng.model(input_ids=torch.tensor([ctx[:-1]])).logits[0]
            np.testing.assert_array_equal(topk.ids, torch.topk(logits, 8, dim=-1).indices.numpy())
        for ctx, tree, topk in rec.seen:
            assert topk.ids.shape == (len(tree), 8)
            for node in range(len(tree)):
                path = tree.tokens[tree.path_to(node)].tolist()
                logits = eng.model(input_ids=torch.tensor([ctx[:-1] + path])).logits[0, -1]
                np.testing.assert_array_equal(topk.ids[node], torch.topk(logits, 8).indices.numpy())
    assert rec.active_requests() == 0


# ------------------------------------------------------------------ sampling (when the verifier exists)
def test_sampling_is_reproducible_with_a_seed(make_tiny):
    from specplug.drafters import verify

    if not hasattr(verify, "verify_sampling"):
        pytest.skip("verify_sampling not available yet")
    from specplug.adapters.hf.config import SamplingConfig

    eng = make_tiny(seed=3)
    prompts = _tiny_prompts(n=2, seed=5)
    cfg = GenerationConfig(max_new_tokens=20, sampling=SamplingConfig(temperature=0.8, top_k=20, top_p=0.9, seed=7))
    runs = [
        [r.output_ids for r in eng.generate(prompts, registry.create("pld", eng.vocab_size), 11, cfg)] for _ in range(2)
    ]
    assert runs[0] == runs[1] and all(len(o) == 20 for o in runs[0])


# ------------------------------------------------------------------ larger variant
@pytest.mark.slow
@pytest.mark.parametrize("batch_size", [1, 8])
def test_pld_lossless_long(default_engine, prompts, batch_size):
    cfg = GenerationConfig(max_new_tokens=128)
    ref = _run(default_engine, prompts, "ar", 1, cfg, 1)
    res = _run(default_engine, prompts, "pld", 11, cfg, batch_size)
    assert _mismatches(res, ref) == []


class FixedTree(ContextDrafter):
    """The same deterministic tree every step: three guesses below the root, two below the first."""

    name = "fixed-tree"

    def propose(self, rids, budgets):
        return [
            DraftTree(
                np.array([int(self.context(r)[-1]), 0, 1, 2, 0, 1]),
                np.array([-1, 0, 0, 0, 1, 1]),
                np.array([1, 0.9, 0.8, 0.7, 0.6, 0.5]),
            ).truncate(b)
            for r, b in zip(rids, budgets)
        ]


@pytest.mark.parametrize("drafter_name", ["fixed-tree", "racer"])
def test_sampling_output_distribution_is_the_targets(make_tiny, drafter_name):
    """Sampled speculative output (fixed draft trees, or RACER's trees valued under the
    request's warp; temperature, top-k and top-p) follows the target's warped joint
    distribution of three tokens, which is the output distribution without speculation
    (chi-square over 10k draws, fixed seed)."""
    from scipy.stats import chisquare

    from specplug.adapters.hf.config import SamplingConfig
    from specplug.adapters.hf.sampling import warp_probs
    from specplug.drafters import verify

    if not hasattr(verify, "verify_sampling"):
        pytest.skip("verify_sampling not available yet")
    from specplug.drafters import registry

    vocab, n_batches, batch = 5, 40, 250
    eng = make_tiny(seed=6, vocab_size=vocab)
    for prm in eng.model.parameters():  # flatten the logits: every cell keeps some mass
        prm.data.mul_(0.6)
    sampling = SamplingConfig(temperature=0.9, top_k=4, top_p=0.9, seed=123)
    prompt = [1, 3, 2, 4]
    counts = np.zeros((vocab,) * 3)
    drafter = FixedTree(vocab) if drafter_name == "fixed-tree" else registry.create("racer", vocab, {"topk": 4})
    for s in range(n_batches):
        # 6 new tokens leave room for the whole tree in the first step; the first 3 are counted
        cfg = GenerationConfig(max_new_tokens=6, sampling=SamplingConfig(**{**sampling.__dict__, "seed": 123 + s}))
        for r in eng.generate([prompt] * batch, drafter, 6, cfg):
            counts[tuple(r.output_ids[:3])] += 1
    assert drafter.active_requests() == 0
    # exact joint distribution by enumeration
    with torch.inference_mode():
        p1 = warp_probs(eng.model(input_ids=torch.tensor([prompt])).logits[0, -1], sampling).double()
        seqs2 = torch.tensor([prompt + [a] for a in range(vocab)])
        p2 = warp_probs(eng.model(input_ids=seqs2).logits[:, -1], sampling).double()
        seqs3 = torch.tensor([prompt + [a, b] for a in range(vocab) for b in range(vocab)])
        p3 = warp_probs(eng.model(input_ids=seqs3).logits[:, -1], sampling).double().reshape(vocab, vocab, vocab)
    joint = (p1[:, None, None] * p2[:, :, None] * p3).numpy()
    expected = joint.ravel() * counts.sum()
    observed = counts.ravel()
    assert observed[expected == 0].sum() == 0  # top-k-masked tokens never appear
    big = expected >= 5
    obs, exp = observed[big], expected[big]
    if expected[~big].sum() > 0:  # the rare cells lumped into one
        obs, exp = np.append(obs, observed[~big].sum()), np.append(exp, expected[~big].sum())
    assert counts.sum() >= 10_000
    assert chisquare(obs, exp).pvalue > 0.01
