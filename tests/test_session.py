"""The engine-side drafting session (drafters/session.py): lifecycle, tree checks, the budget
cut, typed feedback, chains, bounds and runner binding, against scripted drafters."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from specplug.drafters.base import ContextDrafter
from specplug.drafters.budget import BudgetPolicy, CostModel
from specplug.drafters.errors import ConfigError
from specplug.drafters.feedback import Feedback, TopK
from specplug.drafters.session import DraftSession, RequestView, flat_rows
from specplug.drafters.tree import DraftTree

VOCAB = 100


class Scripted(ContextDrafter):
    """Proposes root + (root+1, root+2, ...) chains (node_data = node index); records calls;
    ``bad`` maps a request id to a way of breaking its next tree; ``boom`` raises from there."""

    name = "scripted"
    uses_target_topk = True
    topk = 3

    def __init__(self, vocab_size=VOCAB):
        super().__init__(vocab_size)
        self.starts: list = []
        self.feedback: list[Feedback] = []
        self.bad: dict = {}
        self.boom: str | None = None

    def start(self, rid, context_ids, context_topk=None):
        self.starts.append((rid, list(map(int, context_ids)), context_topk))
        super().start(rid, context_ids)

    def propose(self, rids, budgets):
        if self.boom == "propose":
            raise RuntimeError("boom in propose")
        out = []
        for rid, b in zip(rids, budgets):
            root = int(self.context(rid)[-1])
            n = b - 1
            tree = DraftTree.chain(
                root,
                [(root + 1 + i) % VOCAB for i in range(n)],
                np.linspace(0.9, 0.5, n, dtype=np.float32) if n else None,
            )
            tree.node_data = np.arange(len(tree), dtype=np.int32)
            kind = self.bad.pop(rid, None)
            if kind == "root":
                tree = DraftTree.chain((root + 1) % VOCAB, [1])
            elif kind == "budget":
                tree = DraftTree.chain(root, list(range(1, b + 2)))
            elif kind == "vocab":
                tree = DraftTree.chain(root, [VOCAB + 3], None)
            out.append(tree)
        return out

    def observe_batch(self, feedback):
        if self.boom == "observe":
            raise RuntimeError("boom in observe")
        self.feedback.append(feedback)
        super().observe_batch(feedback)


def views(ctx: dict) -> list[RequestView]:
    return [RequestView(rid, len(c), c[-1], lambda c=c: list(c)) for rid, c in ctx.items()]


def commit(session, step, ctx, n_accept, topk=None):
    """Accept n_accept[b] drafted tokens of each chain, plus bonus 7; feed the session."""
    acc, counts = [], []
    for b, (rid, tree) in enumerate(zip(step.rids, step.trees)):
        k = min(n_accept[b], len(tree) - 1)
        toks = [int(t) for t in tree.tokens[1 : k + 1]] + [7]
        ctx[rid] = ctx[rid] + toks
        acc += toks
        counts.append(len(toks))
    session.observe(step.rids, np.array(acc), np.array(counts), topk)


def test_requests_start_on_first_sight_and_restart_when_lengths_disagree():
    d = Scripted()
    s = DraftSession(d)
    ctx = {"a": [1, 2, 3], "b": [4, 5]}
    step = s.propose(views(ctx), 4)
    assert [r for r, _, _ in d.starts] == ["a", "b"] and s.active == 2
    assert [t.tokens.tolist() for t in step.trees] == [[3, 4, 5, 6], [5, 6, 7, 8]]
    commit(s, step, ctx, [2, 0])
    fb = d.feedback[-1]
    assert fb.rids == ["a", "b"] and fb.accepted.tolist() == [4, 5, 7, 7] and fb.accepted_counts.tolist() == [3, 1]
    s.propose(views(ctx), 4)  # in sync: no restart
    assert len(d.starts) == 2 and s.stats.restarts == 0
    ctx["a"] = ctx["a"][:-2]  # the engine retracted two tokens
    s.propose(views(ctx), 4)
    assert d.starts[-1][:2] == ("a", ctx["a"]) and s.stats.restarts == 1
    s.retain(["b"])
    assert s.active == 1 and d.active_requests() == 1
    s.reset()
    assert s.active == 0 and d.active_requests() == 0


@pytest.mark.parametrize("kind", ["root", "budget", "vocab"])
def test_broken_trees_become_their_root_and_restart(kind, caplog):
    d = Scripted()
    s = DraftSession(d)
    ctx = {"a": [1, 2, 3], "b": [4, 5]}
    d.bad["a"] = kind
    with caplog.at_level(logging.WARNING, "specplug"):
        step = s.propose(views(ctx), 4)
    assert step.trees[0].tokens.tolist() == [3] and len(step.trees[1]) == 4
    assert s.stats.bad_trees == 1 and "broken tree for request a" in caplog.text
    commit(s, step, ctx, [0, 1])
    assert d.feedback[-1].rids == ["b"]  # the broken tree is not observed
    n_starts = len(d.starts)
    s.propose(views(ctx), 4)
    assert len(d.starts) == n_starts + 1 and d.starts[-1][:2] == ("a", ctx["a"])


@pytest.mark.parametrize("where", ["propose", "observe"])
def test_a_raising_drafter_costs_the_step_never_the_batch(where, caplog):
    d = Scripted()
    s = DraftSession(d)
    ctx = {"a": [1, 2, 3], "b": [4, 5]}
    d.boom = where
    with caplog.at_level(logging.ERROR, "specplug"):
        step = s.propose(views(ctx), 4)
        commit(s, step, ctx, [1, 1])
    assert s.stats.drafter_errors == 1 and f"boom in {where}" in caplog.text
    if where == "propose":
        assert all(len(t) == 1 for t in step.trees)
    d.boom = None
    n_starts = len(d.starts)
    step = s.propose(views(ctx), 4)  # every request of the failed call restarts
    assert len(d.starts) == n_starts + 2 and all(len(t) == 4 for t in step.trees)


def test_wrong_number_of_trees_is_contained():
    d = Scripted()
    d.propose = lambda rids, budgets: []  # a drafter bug
    s = DraftSession(d)
    step = s.propose(views({"a": [1, 2]}), 4)
    assert step.trees[0].tokens.tolist() == [2] and s.stats.drafter_errors == 1


def test_policy_cut_trees_are_the_ones_observed_and_keep_node_data():
    d = Scripted()
    flat = CostModel(np.array([1, 2, 64]), np.array([1.0, 1.01, 1.02]), {})
    steep = CostModel(np.array([1, 2, 64]), np.array([1.0, 3.0, 1000.0]), {})
    ctx = {"a": [1, 2, 3], "b": [4, 5]}
    s = DraftSession(d, policy=BudgetPolicy(flat, padded=False))
    step = s.propose(views(ctx), 6)
    assert [len(t) for t in step.trees] == [6, 6]
    s.policy = BudgetPolicy(steep, padded=False)
    commit(s, step, ctx, [5, 5])  # all accepted: the session's length calibration stays high
    step = s.propose(views(ctx), 6)
    assert [len(t) for t in step.trees] == [1, 1]  # nothing pays at that cost: budget 1
    commit(s, step, ctx, [0, 0])
    assert [len(t) for t in d.feedback[-1].trees] == [1, 1]
    s.policy = BudgetPolicy(CostModel(np.array([1, 2, 4, 64]), np.array([1.0, 1.05, 1.6, 100.0]), {}), padded=False)
    step = s.propose(views(ctx), 6)
    assert 1 < max(len(t) for t in step.trees) < 6
    commit(s, step, ctx, [5, 5])
    for sent, seen in zip(step.trees, d.feedback[-1].trees):
        assert seen is sent and seen.node_data.tolist() == list(range(len(seen)))


def test_drafters_without_a_length_calibration_are_priced_at_what_they_realised():
    """pld and suffix keep no length calibration: the session keeps one for them, so under the
    policy a drafter whose guesses are never accepted soon drafts nothing (and one whose
    guesses are all accepted keeps drafting)."""
    cost = CostModel(np.array([1, 2, 8, 64]), np.array([1.0, 1.3, 1.6, 10.0]), {})
    for accepted, want_width in ((0, 1), (4, 5)):
        d = Scripted()
        s = DraftSession(d, policy=BudgetPolicy(cost, padded=False))
        ctx = {"a": [1, 2, 3]}
        widths = []
        for _ in range(6):
            step = s.propose(views(ctx), 5)
            widths.append(step.width)
            commit(s, step, ctx, [min(accepted, step.width - 1)])
        assert widths[0] == 5  # before any evidence the scores are trusted
        assert widths[-1] == want_width, widths
        s.finish("a")
        assert s._lengths is not None and "a" not in s._lengths.req  # no state left behind


def test_feedback_topk_is_flattened_per_verified_node():
    d = Scripted()
    s = DraftSession(d)
    ctx = {"a": [1, 2, 3], "b": [4, 5]}
    step = s.propose(views(ctx), [3, 2])
    w = step.width
    ids = np.arange(2 * w * 3).reshape(2, w, 3)
    commit(s, step, ctx, [1, 1], ids)
    fb = d.feedback[-1]
    assert fb.topk.ids.tolist() == [*ids[0, :3].tolist(), *ids[1, :2].tolist()] and fb.topk.probs is None
    assert fb.topk_of(1).ids.tolist() == ids[1, :2].tolist()
    assert flat_rows(ids, np.array([1, 0])).tolist() == [ids[0, 0].tolist()]


def test_chains_are_padded_and_observed_as_verified():
    d = Scripted()
    s = DraftSession(d)
    ctx = {"a": [1, 2, 3], "b": [4, 5]}
    step, drafts = s.propose_chains(views(ctx), [3, 1], 4)
    assert drafts.tolist() == [[4, 5, 5, 5], [5, 5, 5, 5]]
    chain = s.pending("a")
    assert chain.tokens.tolist() == [3, 4, 5, 5, 5] and chain.node_data.tolist() == [0, 1, 2, -1, -1]
    assert s.pending("b").node_data.tolist() == [0, -1, -1, -1, -1]
    s.observe(["a", "b"], np.array([4, 5, 9, 8]), np.array([3, 1]))
    assert d.feedback[-1].trees[0] is chain and s.pending("a") is None


def test_idle_and_count_bounds_evict_oldest_first():
    d = Scripted()
    s = DraftSession(d, max_idle_steps=2, max_requests=2)
    for rid in "abc":
        s.propose(views({rid: [1, 2]}), 1)
        s.end_step()
    assert s.active == 2 and not s.known("a")  # over the count cap: the oldest goes
    for _ in range(3):
        s.end_step()
    assert s.active == 0 and d.active_requests() == 0 and s.stats.evicted == 3


def test_runners_are_bound_or_the_drafter_refused():
    class NeedsRunner(Scripted):
        needs_runner = "early_exit"

        def bind(self, runner):
            self.runner = runner

    with pytest.raises(ConfigError, match="'early_exit' runner, which TGI does not provide"):
        DraftSession(NeedsRunner(), engine="TGI")
    d = NeedsRunner()
    s = DraftSession(d, runners={"early_exit": lambda: "the runner"})
    assert d.runner == "the runner" and s.runner == "the runner"


def test_explicit_start_takes_prefill_topk_and_mean_accepted_counts_bonus():
    d = Scripted()
    s = DraftSession(d)
    topk = TopK.of(np.zeros((2, 3)))
    s.start("a", [1, 2, 3], topk)
    assert d.starts[0][2] is topk
    ctx = {"a": [1, 2, 3]}
    step = s.propose(views(ctx), 4)
    commit(s, step, ctx, [3])
    assert s.stats.mean_accepted == 4.0 and s.stats.proposed_nodes == 3 and len(d.starts) == 1
