"""SGLang adapter step logic without SGLang: DraftBridge (request lifecycle, packing,
feedback), the device feedback copy, and TP determinism of every registered drafter.

A deterministic fake target (next token = a function of the last 2 tokens) stands in for the
model; trees are verified greedily by walking the packed ancestor mask, the way SGLang's
NGRAM path does, so these tests also check that the packed layout is lossless.
"""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from specplug.adapters.sglang.bridge import DraftBridge, ReqView
from specplug.adapters.sglang.feedback import device_feedback
from specplug.drafters import registry
from specplug.drafters.base import ContextDrafter
from specplug.drafters.tree import DraftTree

VOCAB = 64


def target_next(ctx) -> int:
    a, b = (int(ctx[-2]) if len(ctx) > 1 else 0), int(ctx[-1])
    # depends on two tokens, few states: the output cycles, so drafters find matches
    return (3 * a + b) % 5 + 3


def target_topk(ctx, k):
    first = target_next(ctx)
    return np.array([first] + [(first + 1 + i) % VOCAB for i in range(k - 1)], np.int32)


def verify_packed(tokens, mask, width, contexts):
    """Greedy walk of each packed tree through its ancestor mask (SGLang's contract).
    Returns committed tokens per request (accepted drafts + bonus) and top-k per node."""
    bs = len(contexts)
    tokens = tokens.reshape(bs, width)
    mask = mask.reshape(bs, width, width)
    committed, topks = [], []
    for b in range(bs):
        idx = np.arange(width)
        anc = mask[b] & (idx[None, :] < idx[:, None])
        parent = np.where(anc.any(1), (anc * idx).max(1), -1)
        node_ctx = {0: list(contexts[b])}
        for i in range(1, width):
            if parent[i] >= 0 and parent[i] in node_ctx:
                node_ctx[i] = node_ctx[parent[i]] + [int(tokens[b, i])]
        topks.append(np.stack([target_topk(node_ctx.get(i, contexts[b]), 4) for i in range(width)]))
        cur, out = 0, []
        while True:
            want = target_next(node_ctx[cur])
            kids = [i for i in range(1, width) if parent[i] == cur and tokens[b, i] == want]
            out.append(want)
            if not kids:
                break
            cur = kids[0]
        committed.append(out)
    return committed, np.stack(topks)


# model-free and own-model drafters SGLang runs: not benchmark peers; the early-exit drafters need the
# target's layers (an SGLang model runner), so they are tested with the real engine (test_sglang_engine.py)
SGLANG_ALGORITHMS = [n for n in registry.names()
                     if not registry.get(n).peer and not registry.get(n).extra.get("needs_runner")]

_MODEL_OPTIONS: dict = {}


def model_options(algorithm):
    """Options that algorithms with a model need (diffusion: a tiny random checkpoint, made once)."""
    if algorithm != "diffusion":
        return None
    if "diffusion" not in _MODEL_OPTIONS:
        import tempfile

        from diffusion_helpers import save_tiny
        path = tempfile.mkdtemp(prefix="specplug-tiny-diffusion-")
        save_tiny(path, VOCAB, seed=0)
        _MODEL_OPTIONS["diffusion"] = {"model_path": path, "k_min": 4, "k_max": 6}
    return dict(_MODEL_OPTIONS["diffusion"])


def run_stream(algorithm, prompts, steps, width=8, bridge=None, policy=None, options=None):
    """Drive one bridge over ``steps`` decode steps; returns (outputs, trees per step)."""
    if options is None:
        options = model_options(algorithm)
    drafter = registry.create(algorithm, VOCAB, options)
    bridge = bridge or DraftBridge(drafter, width, VOCAB, policy=policy)
    seqs = {rid: list(p) + [target_next(p)] for rid, p in prompts.items()}  # prefill's token
    history = []
    for _ in range(steps):
        rids = sorted(seqs)
        views = [ReqView(rid, len(seqs[rid]), seqs[rid][-1], (lambda r=rid: list(seqs[r]))) for rid in rids]
        step = bridge.prepare(views)
        history.append([(t.tokens.tolist(), t.parents.tolist()) for t in step.trees])
        W = step.width          # the launch width, or less under a load-aware budget policy
        committed, topk = verify_packed(step.tokens, step.mask, W, [seqs[r] for r in rids])
        acc = np.zeros((len(rids), W), np.int64)
        lens = np.array([len(c) for c in committed])
        for i, c in enumerate(committed):
            acc[i, : len(c)] = c
        # the fake target is sure of its first choice: probabilities 0.9, 0.05, 0.03, 0.02
        probs = np.broadcast_to(np.array([0.9, 0.05, 0.03, 0.02], np.float32), topk.shape)
        bridge.feedback(acc, lens, topk if bridge.topk else None, probs if bridge.topk_probs else None)
        for rid, c in zip(rids, committed):
            seqs[rid].extend(c)
    return seqs, history, bridge


def reference(prompt, n):
    seq = list(prompt)
    while len(seq) < len(prompt) + n:
        seq.append(target_next(seq))
    return seq


# prompts long enough to hold a whole cycle of the fake target: continuations repeat them
PROMPTS = {"a": reference([3, 4], 30), "b": reference([9, 9, 10, 11, 12], 25)}


@pytest.mark.parametrize("algorithm", SGLANG_ALGORITHMS)
def test_bridge_is_lossless_for_every_algorithm(algorithm):
    seqs, _, bridge = run_stream(algorithm, PROMPTS, steps=12)
    for rid, seq in seqs.items():
        assert seq == reference(PROMPTS[rid], len(seq) - len(PROMPTS[rid]))
    assert bridge.stats["bad_trees"] == 0
    assert bridge.active == 2
    bridge.retain([])
    assert bridge.active == 0 and bridge.drafter.active_requests() == 0


@pytest.mark.parametrize("algorithm", SGLANG_ALGORITHMS)
def test_drafts_are_identical_across_instances(algorithm):
    """Tensor parallelism: every rank runs its own drafter on the same stream."""
    _, h1, _ = run_stream(algorithm, PROMPTS, steps=10)
    _, h2, _ = run_stream(algorithm, PROMPTS, steps=10)
    assert h1 == h2


def test_speculation_accepts_on_repetitive_text():
    seqs, _, bridge = run_stream("pld", PROMPTS, steps=12)
    assert bridge.mean_accepted > 1.5  # the fake target repeats: PLD must accept drafts


class Recorder(ContextDrafter):
    name = "recorder"
    uses_target_topk = True
    topk = 4

    def __init__(self, vocab_size, tree_fn=None):
        super().__init__(vocab_size)
        self.calls = []
        self.tree_fn = tree_fn

    def start(self, rid, context_ids, context_topk=None):
        self.calls.append(("start", rid, list(context_ids)))
        super().start(rid, context_ids)

    def propose(self, rids, budgets):
        self.calls.append(("propose", list(rids), list(budgets)))
        out = []
        for rid in rids:
            ctx = self.context(rid)
            out.append(self.tree_fn(ctx) if self.tree_fn else DraftTree.chain(int(ctx[-1]), [7, 8]))
        return out

    def observe(self, rid, tree, accepted, target_topk=None):
        self.calls.append(("observe", rid, list(map(int, accepted)),
                           None if target_topk is None else target_topk.shape))
        super().observe(rid, tree, accepted)

    def finish(self, rid):
        self.calls.append(("finish", rid))
        super().finish(rid)


def view(rid, seq):
    return ReqView(rid, len(seq), seq[-1], lambda: list(seq))


def test_prepare_starts_once_proposes_batched_and_packs():
    d = Recorder(VOCAB)
    br = DraftBridge(d, 4, VOCAB)
    step = br.prepare([view("x", [1, 2, 3]), view("y", [5, 6])])
    assert d.calls == [("start", "x", [1, 2, 3]), ("start", "y", [5, 6]), ("propose", ["x", "y"], [4, 4])]
    assert step.tokens.tolist() == [3, 7, 8, 3, 6, 7, 8, 6]  # padding repeats the root
    m = step.mask.reshape(2, 4, 4)
    assert m[0].tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [0, 0, 0, 1]]
    # feedback: x accepted 7 then bonus 9; y only the bonus 4
    topk = np.arange(2 * 4 * 4, dtype=np.int32).reshape(2, 4, 4)
    br.feedback(np.array([[7, 9, 0, 0], [4, 0, 0, 0]]), np.array([2, 1]), topk)
    assert d.calls[-2:] == [("observe", "x", [7, 9], (3, 4)), ("observe", "y", [4], (3, 4))]
    # next step: lengths match what the drafter saw, so no restart
    d.calls.clear()
    br.prepare([view("x", [1, 2, 3, 7, 9]), view("y", [5, 6, 4])])
    assert d.calls == [("propose", ["x", "y"], [4, 4])]


def test_length_mismatch_restarts_the_request():
    d = Recorder(VOCAB)
    br = DraftBridge(d, 4, VOCAB)
    br.prepare([view("x", [1, 2, 3])])
    br.feedback(np.array([[7, 9, 0, 0]]), np.array([2]))
    d.calls.clear()
    br.prepare([view("x", [1, 2, 3, 7, 9, 11])])  # SGLang committed a token we never saw
    assert d.calls[:2] == [("finish", "x"), ("start", "x", [1, 2, 3, 7, 9, 11])]
    assert br.stats["restarts"] == 1


@pytest.mark.parametrize("bad", ["root", "width", "vocab"])
def test_broken_tree_is_replaced_by_root_and_request_restarted(bad, caplog):
    def tree_fn(ctx):
        root = int(ctx[-1])
        if bad == "root":
            return DraftTree.chain(root + 1, [7])
        if bad == "width":
            return DraftTree.chain(root, [7, 8, 9, 10])
        return DraftTree.chain(root, [VOCAB + 5])

    d = Recorder(VOCAB, tree_fn)
    br = DraftBridge(d, 4, VOCAB)
    with caplog.at_level(logging.WARNING):
        step = br.prepare([view("x", [1, 2, 3]), view("ok", [4])])
    assert "broken tree" in caplog.text
    assert step.tokens[:4].tolist() == [3, 3, 3, 3]  # root alone, padded
    assert step.mask.reshape(2, 4, 4)[0].sum() == 4  # only the diagonal: nothing to accept
    br.feedback(np.array([[5, 0, 0, 0], [6, 0, 0, 0]]), np.array([1, 1]))
    assert not any(c[0] == "observe" for c in d.calls)  # neither tree was valid
    d.calls.clear()
    br.prepare([view("x", [1, 2, 3, 5]), view("ok", [4, 6])])
    assert ("start", "x", [1, 2, 3, 5]) in d.calls


def test_finish_retain_reset_release_drafter_state():
    d = Recorder(VOCAB)
    br = DraftBridge(d, 4, VOCAB)
    br.prepare([view("x", [1]), view("y", [2]), view("z", [3])])
    br.feedback(np.zeros((3, 4), np.int64) + 5, np.ones(3, np.int64))
    br.finish("x")
    br.finish("x")  # idempotent
    assert d.calls.count(("finish", "x")) == 1
    assert br.retain(["y"]) == ["z"]
    br.reset()
    assert br.active == 0 and d.active_requests() == 0


def test_feedback_requires_prepare_and_matching_batch():
    br = DraftBridge(Recorder(VOCAB), 4, VOCAB)
    with pytest.raises(RuntimeError, match="without a preceding prepare"):
        br.feedback(np.zeros((1, 4)), np.ones(1))
    br.prepare([view("x", [1])])
    with pytest.raises(RuntimeError, match="feedback for 2 requests"):
        br.feedback(np.zeros((2, 4)), np.ones(2))


def test_device_feedback_one_copy_matches_reference():
    torch.manual_seed(0)
    bs, w, v, k = 3, 5, 50, 8
    logits = torch.randn(bs * w, v)
    accept = torch.randint(0, v, (bs * w,), dtype=torch.int32)
    lens = torch.tensor([1, 3, 5], dtype=torch.int32)
    tokens, n, topk = device_feedback(logits, accept, lens, bs, w, k)
    assert tokens.tolist() == accept.reshape(bs, w).tolist()
    assert n.tolist() == [1, 3, 5]
    ref = torch.topk(logits, k, dim=-1).indices.reshape(bs, w, k)
    assert topk.dtype == np.int32 and topk.tolist() == ref.tolist()
    assert topk[0, 0, 0] == int(logits[0].argmax())
    tokens, n, none = device_feedback(None, accept, lens, bs, w, 0)
    assert none is None and n.tolist() == [1, 3, 5]
    *_, ids, probs = device_feedback(logits, accept, lens, bs, w, k, probs=True)
    assert ids.tolist() == ref.tolist() and probs.dtype == np.float32
    np.testing.assert_allclose(probs, torch.softmax(logits, -1).topk(k).values.reshape(bs, w, k), rtol=1e-5)


@pytest.mark.parametrize("algorithm", ["racer", "token-recycling"])
def test_dynamic_trees_get_the_target_probabilities(algorithm):
    """Dynamic trees grow on the target's top-k probabilities: the bridge passes them on."""
    seen = []
    drafter = registry.create(algorithm, VOCAB, {"tree": "dynamic"})
    original = drafter.observe_batch

    def spy(rids, trees, accepted, target_topk=None):
        seen.extend(target_topk)
        return original(rids, trees, accepted, target_topk)

    drafter.observe_batch = spy
    seqs, _, bridge = run_stream(algorithm, PROMPTS, steps=6, bridge=DraftBridge(drafter, 8, VOCAB))
    assert bridge.topk_probs and seen and all(isinstance(t, tuple) and len(t) == 2 for t in seen)
    ids, probs = seen[0]
    assert ids.shape == probs.shape and probs.dtype == np.float32
    for rid, seq in seqs.items():
        assert seq == reference(PROMPTS[rid], len(seq) - len(PROMPTS[rid]))


# ------------------------------------------------------------------ load-aware widths
def _policy(tokens, seconds):
    from specplug.drafters.budget import BudgetPolicy, CostModel

    return BudgetPolicy(CostModel(np.array(tokens), np.array(seconds), {}), padded=True)


LOAD_AWARE = [("racer", {"tree": "dynamic"}), ("token-recycling", {"tree": "dynamic"}), ("pld", None),
              ("suffix", None)]


@pytest.mark.parametrize("algorithm,options", LOAD_AWARE)
def test_load_aware_bridge_is_lossless_at_every_chosen_width(algorithm, options):
    # verify cost grows with the batch's tokens: the policy picks widths between 1 and 8
    policy = _policy([1, 2, 4, 8, 16, 64], [1.0, 1.3, 1.9, 3.0, 5.5, 25.0])
    widths = []

    class Recording(DraftBridge):
        def prepare(self, reqs):
            step = super().prepare(reqs)
            widths.append(step.width)
            assert step.tokens.shape == (len(reqs) * step.width,)
            assert step.mask.shape == (len(reqs) * step.width ** 2,)
            return step

    bridge = Recording(registry.create(algorithm, VOCAB, options), 8, VOCAB, policy=policy)
    seqs, _, bridge = run_stream(algorithm, PROMPTS, steps=14, bridge=bridge)
    for rid, seq in seqs.items():
        assert seq == reference(PROMPTS[rid], len(seq) - len(PROMPTS[rid]))
    assert bridge.stats["bad_trees"] == 0
    assert all(1 <= w <= 8 for w in widths) and max(widths) > 1, widths


def test_load_aware_width_is_one_when_verification_is_dear_and_full_when_free():
    dear = _policy([1, 2, 64], [1.0, 100.0, 10000.0])   # a second token per request costs 100x
    seqs, history, bridge = run_stream("pld", PROMPTS, steps=8, policy=dear)
    assert all(len(toks) == 1 for step in history for toks, _ in step)   # root only: no speculation
    assert bridge.mean_accepted == 1.0
    for rid, seq in seqs.items():
        assert seq == reference(PROMPTS[rid], len(seq) - len(PROMPTS[rid]))
    free = _policy([1, 4096], [1.0, 1.0])
    _, h_free, b_free = run_stream("pld", PROMPTS, steps=8, policy=free)
    _, h_none, b_none = run_stream("pld", PROMPTS, steps=8)
    assert h_free == h_none          # free verification: every drafted node is kept
    assert b_free.mean_accepted == b_none.mean_accepted > 1.5


def test_worker_width_views_and_relayout():
    from specplug.adapters.sglang.widths import relayout as _relayout, RowsOf as _RowsOf

    buf = torch.arange(4 * 8).view(4, 8)             # preallocated at launch width 8, 4 rows
    rows = _RowsOf(buf, 3, 3)[2]                     # width 3, batch of 2
    assert rows.shape == (2, 3) and rows.tolist() == [[0, 1, 2], [3, 4, 5]]
    rows.fill_(-1)                                   # a view: writes land in the buffer
    assert buf.view(-1)[:6].tolist() == [-1] * 6 and buf.view(-1)[6] == 6
    assert _RowsOf(buf, 9)[2].shape == (18,)         # flat views (the 3x3 tree mask per request)

    class Spec:
        accept_tokens = torch.tensor([5, 6, 0, 7, 0, 0])   # 2 requests at width 3
        draft_token_num = num_tokens_per_req = num_tokens_for_logprob_per_req = 3

    spec = Spec()
    _relayout(spec, 2, 3, 8)
    assert spec.accept_tokens.reshape(2, 8)[:, :3].tolist() == [[5, 6, 0], [7, 0, 0]]
    assert spec.draft_token_num == spec.num_tokens_per_req == spec.num_tokens_for_logprob_per_req == 8


def test_tight_widths_pack_each_step_to_its_widest_tree():
    """Engines without CUDA graphs: no padding to the launch width, same trees, same output."""
    widths = []

    class Recording(DraftBridge):
        def prepare(self, reqs):
            step = super().prepare(reqs)
            widths.append(step.width)
            assert step.width == max(len(t) for t in step.trees)
            return step

    bridge = Recording(registry.create("pld", VOCAB), 16, VOCAB)
    bridge.tight = True
    seqs, h_tight, bridge = run_stream("pld", PROMPTS, steps=10, width=16, bridge=bridge)
    _, h_fixed, fixed = run_stream("pld", PROMPTS, steps=10, width=16)
    assert h_tight == h_fixed and bridge.mean_accepted == fixed.mean_accepted
    assert min(widths) < 16, widths
    for rid, seq in seqs.items():
        assert seq == reference(PROMPTS[rid], len(seq) - len(PROMPTS[rid]))


def test_load_aware_packs_the_cut_trees_even_at_the_launch_width():
    """One tree keeps all its nodes (width stays W) while another is cut: the packed step
    must hold the cut trees, exactly as the drafter will observe them."""
    def tree_fn(ctx):
        root = int(ctx[-1])
        if root == 3:          # request "full": 3 confident nodes
            return DraftTree(np.array([root, 7, 8, 9], np.int32), np.array([-1, 0, 1, 2], np.int32),
                             np.array([1.0, 0.9, 0.9, 0.9], np.float32))
        return DraftTree(np.array([root, 7, 8, 9], np.int32), np.array([-1, 0, 1, 2], np.int32),
                         np.array([1.0, 0.9, 1e-6, 1e-6], np.float32))   # request "cut": 1 node pays

    policy = _policy([1, 4096], [1.0, 1.0])          # verification is free: only min_gain cuts
    br = DraftBridge(Recorder(VOCAB, tree_fn), 4, VOCAB, policy=policy)
    step = br.prepare([view("full", [1, 2, 3]), view("cut", [5, 6])])
    assert step.width == 4 and [len(t) for t in step.trees] == [4, 2]
    tokens = step.tokens.reshape(2, 4)
    assert tokens[1].tolist() == [6, 7, 6, 6]        # the cut tree, padded with its root
    mask = step.mask.reshape(2, 4, 4)
    assert mask[1].tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
