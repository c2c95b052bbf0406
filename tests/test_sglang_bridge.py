"""The SGLang worker's glue around the drafting session, without SGLang: views of SGLang
``Req`` rows, the session's propose (lifecycle, tree checks, budget cut), packing at the step's
width, the device feedback copy and ``session.observe``; TP determinism of every drafter.

Each step here is the worker's (``SpecplugWorker._prepare_draft_tokens`` and ``_observe``):
``session.propose(views, launch width)``, ``verify_inputs(step, width)`` at the widest tree
(budget policy, no CUDA graphs) or the launch width, then ``observe_verified(session, rids,
*device_feedback(logits, accept_tokens, accept_lens, ...))``. A deterministic fake target
(next token = a function of the last 2 tokens, its logits built from that) verifies greedily by
walking the packed ancestor mask, the way SGLang's NGRAM path does, so these tests also check
that the packed layout is lossless.
"""

from __future__ import annotations

import logging
import types

import numpy as np
import pytest
import torch

from specplug.adapters.sglang.bridge import observe_verified, request_view, verify_inputs
from specplug.adapters.sglang.feedback import device_feedback
from specplug.drafters import registry
from specplug.drafters.base import ContextDrafter
from specplug.drafters.session import DraftSession
from specplug.drafters.tree import DraftTree

VOCAB = 64
#: the fake target's logits: its top choices get these values, every other id 0
RANK_LOGITS = np.array([10.0, 7.0, 6.5, 6.0, 5.5, 5.0, 4.5, 4.0, 3.5, 3.0, 2.5, 2.0, 1.5, 1.2, 1.1, 1.05], np.float32)
#: accept_tokens past a row's count: SGLang leaves whatever predict[-1] holds there
GARBAGE = VOCAB - 1


def target_next(ctx) -> int:
    a, b = (int(ctx[-2]) if len(ctx) > 1 else 0), int(ctx[-1])
    # depends on two tokens, few states: the output cycles, so drafters find matches
    return (3 * a + b) % 5 + 3


def target_logits(ctx) -> np.ndarray:
    first = target_next(ctx)
    row = np.zeros(VOCAB, np.float32)
    row[[(first + i) % VOCAB for i in range(len(RANK_LOGITS))]] = RANK_LOGITS
    return row


def verify_packed(tokens, mask, width, contexts):
    """Greedy walk of each packed tree through its ancestor mask (SGLang's contract).
    Returns the committed tokens per request (accepted drafts + bonus) and the target's
    logits at every packed node [B * W, V]."""
    bs = len(contexts)
    tokens = tokens.reshape(bs, width)
    mask = mask.reshape(bs, width, width)
    committed, logits = [], []
    for b in range(bs):
        idx = np.arange(width)
        anc = mask[b] & (idx[None, :] < idx[:, None])
        parent = np.where(anc.any(1), (anc * idx).max(1), -1)
        node_ctx = {0: list(contexts[b])}
        for i in range(1, width):
            if parent[i] >= 0 and parent[i] in node_ctx:
                node_ctx[i] = node_ctx[parent[i]] + [int(tokens[b, i])]
        logits.extend(target_logits(node_ctx.get(i, contexts[b])) for i in range(width))
        cur, out = 0, []
        while True:
            want = target_next(node_ctx[cur])
            kids = [i for i in range(1, width) if parent[i] == cur and tokens[b, i] == want]
            out.append(want)
            if not kids:
                break
            cur = kids[0]
        committed.append(out)
    return committed, torch.from_numpy(np.stack(logits))


def sglang_req(rid, seq, prompt_len=None):
    """The fields of SGLang's ``Req`` the glue reads."""
    n = len(seq) if prompt_len is None else prompt_len
    return types.SimpleNamespace(rid=rid, origin_input_ids_unpadded=list(seq[:n]), output_ids=list(seq[n:]))


def worker_step(session, reqs, launch_width, tight=False, on_step=None):
    """One decode step as SpecplugWorker runs it; returns (step, width, committed per request)."""
    step = session.propose([request_view(r) for r in reqs], launch_width)
    width = step.width if tight else launch_width
    tokens, mask = verify_inputs(step, width)
    assert tokens.dtype == np.int64 and tokens.shape == (len(reqs) * width,)
    assert mask.dtype == np.bool_ and mask.shape == (len(reqs) * width * width,)
    if on_step is not None:
        on_step(step, width, tokens, mask)
    contexts = [list(r.origin_input_ids_unpadded) + list(r.output_ids) for r in reqs]
    committed, logits = verify_packed(tokens, mask, width, contexts)
    accept = torch.full((len(reqs), width), GARBAGE, dtype=torch.int32)
    for i, c in enumerate(committed):
        accept[i, : len(c)] = torch.tensor(c, dtype=torch.int32)
    lens = torch.tensor([len(c) for c in committed], dtype=torch.int32)
    observe_verified(
        session,
        step.rids,
        *device_feedback(logits, accept.reshape(-1), lens, len(reqs), width, session.topk, session.topk_probs),
    )
    return step, width, committed


# model-free and own-model drafters SGLang runs: not benchmark peers; the early-exit drafters need the
# target's layers (an SGLang model runner), so they are tested with the real engine (test_sglang_engine.py)
SGLANG_ALGORITHMS = [n for n in registry.names() if not registry.get(n).peer and not registry.get(n).needs_runner]

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


def run_stream(algorithm, prompts, steps, width=8, session=None, policy=None, options=None, tight=None, on_step=None):
    """Drive one session over ``steps`` decode steps; returns (outputs, trees per step, session)."""
    if session is None:
        drafter = registry.create(algorithm, VOCAB, model_options(algorithm) if options is None else options)
        session = DraftSession(drafter, VOCAB, policy=policy, engine="SGLang")
    tight = session.policy is not None if tight is None else tight  # the worker's rule (CUDA graphs on)
    seqs = {rid: list(p) + [target_next(p)] for rid, p in prompts.items()}  # prefill's token
    plen = {rid: len(p) for rid, p in prompts.items()}
    history = []
    for _ in range(steps):
        rids = sorted(seqs)
        step, _, committed = worker_step(
            session, [sglang_req(r, seqs[r], plen[r]) for r in rids], width, tight, on_step
        )
        history.append([(t.tokens.tolist(), t.parents.tolist()) for t in step.trees])
        for rid, c in zip(rids, committed):
            seqs[rid].extend(c)
    return seqs, history, session


def reference(prompt, n):
    seq = list(prompt)
    while len(seq) < len(prompt) + n:
        seq.append(target_next(seq))
    return seq


def assert_lossless(seqs):
    for rid, seq in seqs.items():
        assert seq == reference(PROMPTS[rid], len(seq) - len(PROMPTS[rid]))


# prompts long enough to hold a whole cycle of the fake target: continuations repeat them
PROMPTS = {"a": reference([3, 4], 30), "b": reference([9, 9, 10, 11, 12], 25)}


@pytest.mark.parametrize("algorithm", SGLANG_ALGORITHMS)
def test_worker_glue_is_lossless_for_every_algorithm(algorithm):
    seqs, _, session = run_stream(algorithm, PROMPTS, steps=12)
    assert_lossless(seqs)
    assert session.stats.bad_trees == 0 and session.stats.drafter_errors == 0
    assert session.active == 2
    session.retain([])
    assert session.active == 0 and session.drafter.active_requests() == 0


@pytest.mark.parametrize("algorithm", SGLANG_ALGORITHMS)
def test_drafts_are_identical_across_instances(algorithm):
    """Tensor parallelism: every rank runs its own drafter on the same stream."""
    _, h1, _ = run_stream(algorithm, PROMPTS, steps=10)
    _, h2, _ = run_stream(algorithm, PROMPTS, steps=10)
    assert h1 == h2


def test_speculation_accepts_on_repetitive_text_and_stats_add_up():
    seqs, _, session = run_stream("pld", PROMPTS, steps=12)
    s = session.stats
    assert s.mean_accepted > 1.5  # the fake target repeats: PLD must accept drafts
    assert s.steps == 12 and s.verified_requests == 24 and s.restarts == 0
    generated = sum(len(seq) - len(PROMPTS[rid]) - 1 for rid, seq in seqs.items())  # less prefill's token
    assert s.accepted_tokens == generated and s.mean_accepted == generated / 24
    assert s.proposed_nodes > 0 and s.draft_s > 0 and s.observe_s > 0


def test_request_view_of_an_sglang_req():
    v = request_view(sglang_req("r", [5, 6, 7, 8], prompt_len=3))
    assert (v.rid, v.length, v.last_token, list(v.context())) == ("r", 4, 8, [5, 6, 7, 8])
    v = request_view(sglang_req("p", [5, 6, 7]))  # right after prefill: no output yet
    assert (v.length, v.last_token) == (3, 7)


class Recorder(ContextDrafter):
    name = "recorder"
    uses_target_topk = True
    topk = 4

    def __init__(self, vocab_size, tree_fn=None):
        super().__init__(vocab_size)
        self.calls = []
        self.observed = {}
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
        self.calls.append(
            ("observe", rid, list(map(int, accepted)), None if target_topk is None else target_topk.ids.shape)
        )
        self.observed[rid] = (tree, None if target_topk is None else target_topk.ids.copy())
        super().observe(rid, tree, accepted)

    def finish(self, rid):
        self.calls.append(("finish", rid))
        super().finish(rid)


def session_of(drafter, policy=None):
    return DraftSession(drafter, VOCAB, policy=policy, engine="SGLang")


def test_propose_starts_once_batched_packs_and_observes_the_slices():
    d = Recorder(VOCAB)
    s = session_of(d)
    step = s.propose([request_view(sglang_req("x", [1, 2, 3], 2)), request_view(sglang_req("y", [5, 6]))], 4)
    assert d.calls == [("start", "x", [1, 2, 3]), ("start", "y", [5, 6]), ("propose", ["x", "y"], [4, 4])]
    tokens, mask = verify_inputs(step, 4)
    assert tokens.tolist() == [3, 7, 8, 3, 6, 7, 8, 6]  # padding repeats the root
    assert mask.reshape(2, 4, 4)[0].tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [0, 0, 0, 1]]
    # verification: x accepted 7 then bonus 9; y only the bonus 4; the rest of each row is garbage
    accept = torch.tensor([7, 9, GARBAGE, GARBAGE, 4, GARBAGE, GARBAGE, GARBAGE], dtype=torch.int32)
    logits = torch.randn(8, VOCAB)
    observe_verified(s, step.rids, *device_feedback(logits, accept, torch.tensor([2, 1]), 2, 4, s.topk))
    assert d.calls[-2:] == [("observe", "x", [7, 9], (3, 4)), ("observe", "y", [4], (3, 4))]
    ref = torch.topk(logits, 4, dim=-1).indices.reshape(2, 4, 4)
    assert d.observed["x"][1].tolist() == ref[0, :3].tolist()  # each tree's own rows, not the padding
    assert d.observed["y"][1].tolist() == ref[1, :3].tolist()
    # next step: lengths match what the drafter saw, so no restart
    d.calls.clear()
    s.propose([request_view(sglang_req("x", [1, 2, 3, 7, 9], 2)), request_view(sglang_req("y", [5, 6, 4], 2))], 4)
    assert d.calls == [("propose", ["x", "y"], [4, 4])]


def test_length_mismatch_restarts_the_request():
    d = Recorder(VOCAB)
    s = session_of(d)
    worker_step(s, [sglang_req("x", [1, 2, 3])], 4)
    d.calls.clear()
    s.propose([request_view(sglang_req("x", [1, 2, 3, 7, 9, 11], 3))], 4)  # SGLang committed a token we never saw
    assert d.calls[:2] == [("finish", "x"), ("start", "x", [1, 2, 3, 7, 9, 11])]
    assert s.stats.restarts == 1


@pytest.mark.parametrize("bad", ["root", "width", "vocab"])
def test_broken_tree_is_replaced_by_root_and_request_restarted(bad, caplog):
    def tree_fn(ctx):
        root = int(ctx[-1])
        if root == 4:  # request "ok" drafts a valid tree
            return DraftTree.chain(root, [7])
        if bad == "root":
            return DraftTree.chain(root + 1, [7])
        if bad == "width":
            return DraftTree.chain(root, [7, 8, 9, 10])
        return DraftTree.chain(root, [VOCAB + 5])

    d = Recorder(VOCAB, tree_fn)
    s = session_of(d)
    with caplog.at_level(logging.WARNING):
        step = s.propose([request_view(sglang_req("x", [1, 2, 3])), request_view(sglang_req("ok", [4]))], 4)
    assert "broken tree" in caplog.text and s.stats.bad_trees == 1
    tokens, mask = verify_inputs(step, 4)
    assert tokens[:4].tolist() == [3, 3, 3, 3]  # root alone, padded
    assert mask.reshape(2, 4, 4)[0].sum() == 4  # only the diagonal: nothing to accept
    accept = torch.tensor([5, 0, 0, 0, 7, 6, 0, 0], dtype=torch.int32)
    observe_verified(s, step.rids, *device_feedback(torch.randn(8, VOCAB), accept, torch.tensor([1, 2]), 2, 4, 4))
    assert [c[1] for c in d.calls if c[0] == "observe"] == ["ok"]  # the broken tree is not observed
    d.calls.clear()
    s.propose([request_view(sglang_req("x", [1, 2, 3, 5])), request_view(sglang_req("ok", [4, 7, 6]))], 4)
    assert ("start", "x", [1, 2, 3, 5]) in d.calls and not any(c[:2] == ("start", "ok") for c in d.calls)


def test_drafter_errors_cost_speculation_never_the_batch(caplog):
    class Failing(Recorder):
        def propose(self, rids, budgets):
            raise RuntimeError("drafter bug")

    s = session_of(Failing(VOCAB))
    with caplog.at_level(logging.ERROR):
        step, width, committed = worker_step(s, [sglang_req("x", [1, 2, 3]), sglang_req("y", [4, 5])], 4)
    assert [len(t) for t in step.trees] == [1, 1] and committed == [[target_next([1, 2, 3])], [target_next([4, 5])]]
    assert s.stats.drafter_errors == 1 and "drafter bug" in caplog.text


def test_finish_retain_reset_release_drafter_state():
    d = Recorder(VOCAB)
    s = session_of(d)
    worker_step(s, [sglang_req("x", [1]), sglang_req("y", [2]), sglang_req("z", [3])], 4)
    s.finish("x")  # note_request_finished / the corpus shim's erase_match_state
    s.finish("x")  # idempotent
    assert d.calls.count(("finish", "x")) == 1
    assert s.retain(["y"]) == ["z"]
    s.reset()  # clear_cache_pool
    assert s.active == 0 and d.active_requests() == 0


def test_observe_checks_the_batch_and_skips_requests_without_a_tree():
    d = Recorder(VOCAB)
    s = session_of(d)
    s.observe(["never-proposed"], np.array([5]), np.array([1]))  # nothing pending: skipped
    assert not d.calls and s.stats.verified_requests == 1
    step = s.propose([request_view(sglang_req("x", [1]))], 4)
    with pytest.raises(ValueError, match="1 requests, 2 counts"):
        observe_verified(s, step.rids, np.zeros((2, 4), np.int64), np.ones(2, np.int64))


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
    """Dynamic trees grow on the target's top-k probabilities: the glue passes them on."""
    seen = []
    drafter = registry.create(algorithm, VOCAB, {"tree": "dynamic"})
    original = drafter.observe_batch

    def spy(feedback):
        seen.append(feedback)
        return original(feedback)

    drafter.observe_batch = spy
    seqs, _, session = run_stream(algorithm, PROMPTS, steps=6, session=session_of(drafter))
    assert session.topk_probs and seen and all(f.topk is not None and f.topk.probs is not None for f in seen)
    fb = seen[0]
    assert fb.topk.ids.shape == fb.topk.probs.shape == (int(fb.node_offsets[-1]), session.topk)
    assert fb.topk.probs.dtype == np.float32
    np.testing.assert_allclose(fb.topk.probs[:, 0], np.exp(10) / (np.exp(RANK_LOGITS).sum() + VOCAB - 16), rtol=1e-5)
    assert_lossless(seqs)


# ------------------------------------------------------------------ load-aware and tight widths
def _policy(tokens, seconds):
    from specplug.drafters.budget import BudgetPolicy, CostModel

    return BudgetPolicy(CostModel(np.array(tokens), np.array(seconds), {}), padded=True)


LOAD_AWARE = [("racer", {"tree": "dynamic"}), ("token-recycling", {"tree": "dynamic"}), ("pld", None), ("suffix", None)]


@pytest.mark.parametrize("algorithm,options", LOAD_AWARE)
def test_load_aware_glue_is_lossless_at_every_chosen_width(algorithm, options):
    # verify cost grows with the batch's tokens: the policy picks widths between 1 and 8
    policy = _policy([1, 2, 4, 8, 16, 64], [1.0, 1.3, 1.9, 3.0, 5.5, 25.0])
    widths = []

    def on_step(step, width, tokens, mask):
        assert width == step.width == max(len(t) for t in step.trees)
        widths.append(width)

    seqs, _, session = run_stream(algorithm, PROMPTS, steps=14, policy=policy, options=options, on_step=on_step)
    assert_lossless(seqs)
    assert session.stats.bad_trees == 0
    assert all(1 <= w <= 8 for w in widths) and max(widths) > 1, widths


def test_load_aware_width_is_one_when_verification_is_dear_and_full_when_free():
    dear = _policy([1, 2, 64], [1.0, 100.0, 10000.0])  # a second token per request costs 100x
    seqs, history, session = run_stream("pld", PROMPTS, steps=8, policy=dear)
    assert all(len(toks) == 1 for step in history for toks, _ in step)  # root only: no speculation
    assert session.stats.mean_accepted == 1.0
    assert_lossless(seqs)
    free = _policy([1, 4096], [1.0, 1.0])
    _, h_free, s_free = run_stream("pld", PROMPTS, steps=8, policy=free)
    _, h_none, s_none = run_stream("pld", PROMPTS, steps=8)
    assert h_free == h_none  # free verification: every drafted node is kept
    assert s_free.stats.mean_accepted == s_none.stats.mean_accepted > 1.5


def test_worker_width_views_and_relayout():
    from specplug.adapters.sglang.widths import VIEW_LISTS, RowsOf, relayout, views_at

    buf = torch.arange(4 * 8).view(4, 8)  # preallocated at launch width 8, 4 rows
    rows = RowsOf(buf, 3, 3)[2]  # width 3, batch of 2
    assert rows.shape == (2, 3) and rows.tolist() == [[0, 1, 2], [3, 4, 5]]
    rows.fill_(-1)  # a view: writes land in the buffer
    assert buf.view(-1)[:6].tolist() == [-1] * 6 and buf.view(-1)[6] == 6
    assert RowsOf(buf, 9)[2].shape == (18,)  # flat views (the 3x3 tree mask per request)

    worker = types.SimpleNamespace(
        retrieve_indexes=torch.zeros(4, 8),
        retrieve_next_token=torch.zeros(4, 8),
        retrieve_next_sibling=torch.zeros(4, 8),
        positions=torch.zeros(32),
        draft_tokens=torch.zeros(32),
        tree_mask=torch.zeros(256, dtype=torch.bool),
    )
    views = views_at(worker, 3)
    assert set(views) == set(VIEW_LISTS)
    assert views["retrieve_indexes_batch"][2].shape == (2, 3) and views["tree_mask_batch"][2].shape == (18,)
    assert views["draft_tokens_batch"][4].shape == views["positions_batch"][4].shape == (12,)

    class Spec:
        accept_tokens = torch.tensor([5, 6, 0, 7, 0, 0])  # 2 requests at width 3
        draft_token_num = num_tokens_per_req = num_tokens_for_logprob_per_req = 3

    spec = Spec()
    relayout(spec, 2, 3, 8)
    assert spec.accept_tokens.reshape(2, 8)[:, :3].tolist() == [[5, 6, 0], [7, 0, 0]]
    assert spec.draft_token_num == spec.num_tokens_per_req == spec.num_tokens_for_logprob_per_req == 8


def test_tight_widths_pack_each_step_to_its_widest_tree():
    """Engines without CUDA graphs: no padding to the launch width, same trees, same output."""
    widths = []

    def on_step(step, width, tokens, mask):
        assert width == max(len(t) for t in step.trees)
        widths.append(width)

    seqs, h_tight, tight = run_stream("pld", PROMPTS, steps=10, width=16, tight=True, on_step=on_step)
    _, h_fixed, fixed = run_stream("pld", PROMPTS, steps=10, width=16)
    assert h_tight == h_fixed and tight.stats.mean_accepted == fixed.stats.mean_accepted
    assert min(widths) < 16, widths
    assert_lossless(seqs)


def test_load_aware_packs_the_cut_trees_as_observed_even_at_the_launch_width():
    """One tree keeps all its nodes (width stays W) while another is cut: the packed step
    must hold the cut trees, exactly the trees the drafter then observes."""

    def tree_fn(ctx):
        root = int(ctx[-1])
        if root == 3:  # request "full": 3 confident nodes
            return DraftTree(
                np.array([root, 7, 8, 9], np.int32),
                np.array([-1, 0, 1, 2], np.int32),
                np.array([1.0, 0.9, 0.9, 0.9], np.float32),
            )
        return DraftTree(
            np.array([root, 7, 8, 9], np.int32),
            np.array([-1, 0, 1, 2], np.int32),
            np.array([1.0, 0.9, 1e-6, 1e-6], np.float32),
        )  # request "cut": 1 node pays

    d = Recorder(VOCAB, tree_fn)
    s = session_of(d, policy=_policy([1, 4096], [1.0, 1.0]))  # verification is free: only min_gain cuts
    packed = {}

    def on_step(step, width, tokens, mask):
        packed.update(
            width=width,
            sizes=[len(t) for t in step.trees],
            tokens=tokens.reshape(2, width),
            mask=mask.reshape(2, width, width),
        )

    worker_step(s, [sglang_req("full", [1, 2, 3]), sglang_req("cut", [5, 6])], 4, tight=True, on_step=on_step)
    assert packed["width"] == 4 and packed["sizes"] == [4, 2]
    assert packed["tokens"][1].tolist() == [6, 7, 6, 6]  # the cut tree, padded with its root
    assert packed["mask"][1].tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    for row, rid in enumerate(["full", "cut"]):  # observed: the trees as packed, their own top-k rows
        tree, topk = d.observed[rid]
        n = packed["sizes"][row]
        assert tree.tokens.tolist() == packed["tokens"][row, :n].tolist() and topk.shape == (n, 4)
        assert np.array_equal(tree.ancestor_mask, packed["mask"][row, :n, :n])
