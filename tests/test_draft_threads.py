"""Parallel batched drafting: trees and shared state are identical at every thread count.

Each model-free algorithm runs the same multi-step engine loop (propose at mixed budgets,
greedy verification with the target's top-k, observe; requests finishing and new ones
starting in between) with 1 and with several draft threads; the small-batch thresholds are
lowered so that every batch is split. Every tree and the shared tables must match.
"""

import numpy as np
import pytest

from specplug.bench_drafters import SyntheticWorkload, verify_batch
from specplug.drafters import automaton_drafter, pld, racer, registry, suffix, threads, token_recycling
from specplug.drafters.errors import ConfigError
from specplug.drafters.feedback import TopK

VARIANTS = [
    ("racer", {}),
    ("racer", {"tree": "static"}),
    ("racer", {"global_cache": True, "pair_rows": 64}),
    ("token-recycling", {}),
    ("token-recycling", {"tree": "dynamic"}),
    ("suffix", {}),
    ("pld", {}),
]
BUDGETS = (1, 4, 16, 40, 64)


@pytest.fixture
def split_every_batch(monkeypatch):
    for mod, names in (
        (racer, ["PROPOSE_MIN_ROWS"]),
        (automaton_drafter, ["OBSERVE_MIN_ROWS"]),
        (suffix, ["PROPOSE_MIN_ROWS"]),
        (token_recycling, ["STATIC_MIN_ROWS", "DYNAMIC_MIN_ROWS", "OBSERVE_MIN_ROWS"]),
        (pld, ["PROPOSE_MIN_ROWS"]),
    ):
        for name in names:
            monkeypatch.setattr(mod, name, 1)


def run_loop(name, opts, n_threads, steps=30, batch=9, vocab=2000):
    """(every tree of the run as arrays, the drafter) for one thread count."""
    w = SyntheticWorkload(vocab, seed=3, n_snippets=120)
    d = registry.create(name, vocab, {**opts, "draft_threads": n_threads})
    rng = np.random.default_rng(5)
    length = 900
    streams = np.zeros((batch, length + 80), np.int64)
    pos = np.zeros(batch, np.int64)
    end = np.zeros(batch, np.int64)
    rids: list = [None] * batch
    next_rid = 0

    def admit(i):
        nonlocal next_rid
        p, g = int(rng.integers(30, 200)), int(rng.integers(10, 60))
        s = w.stream(p + g + 1)
        streams[i] = 0
        streams[i, : s.shape[0]] = s
        pos[i], end[i] = p - 1, p + g
        rids[i] = next_rid
        next_rid += 1
        ctx = s[:p]
        topk = None
        if d.uses_target_topk:
            ids = w.alternatives(ctx[:-1])
            ids[:, 0] = ctx[1:]
            pr = np.linspace(0.6, 0.05, ids.shape[1], dtype=np.float32)[None].repeat(ids.shape[0], 0)
            topk = TopK.of(ids, pr if d.feedback_probs else None)
        d.start(rids[i], ctx, topk)

    for i in range(batch):
        admit(i)
    out = []
    for _ in range(steps):
        budgets = [int(BUDGETS[int(j)]) for j in rng.integers(len(BUDGETS), size=batch)]
        trees = d.propose(list(rids), budgets)
        for t in trees:
            out.append(
                (
                    t.tokens.copy(),
                    t.parents.copy(),
                    t.scores.copy(),
                    None if t.node_data is None else t.node_data.copy(),
                )
            )
        feedback, acc = verify_batch(
            list(rids), trees, streams, pos, w, probs=d.feedback_probs, topk=d.uses_target_topk
        )
        d.observe_batch(feedback)
        pos += acc + 1
        for i in np.flatnonzero(pos >= end).tolist():
            d.finish(rids[i])
            admit(i)
    return out, d


def shared_state(d):
    """The shared tables and counters a drafter keeps (empty for the context-only ones)."""
    arrays = []
    for table in (getattr(d, "adjacency", None), getattr(d, "pairs", None)):
        if table is not None:
            arrays += [table.rows, table.probs, table.calibration.hits, table.calibration.trials]
            arrays += [getattr(table, "keys", np.zeros(0)), getattr(table, "hits", np.zeros(0))]
    return arrays


@pytest.mark.parametrize("name, opts", VARIANTS, ids=[f"{n}{o}" for n, o in VARIANTS])
def test_trees_identical_across_thread_counts(name, opts, split_every_batch):
    one, d1 = run_loop(name, opts, 1)
    assert d1.threads.n == 1
    for n in (2, 3):
        many, dn = run_loop(name, opts, n)
        assert len(many) == len(one)
        for a, b in zip(one, many):
            for x, y in zip(a, b):
                if x is None or y is None:
                    assert x is None and y is None
                else:
                    np.testing.assert_array_equal(x, y)
        for x, y in zip(shared_state(d1), shared_state(dn)):
            np.testing.assert_array_equal(x, y)
    assert any(len(t[0]) > 1 for t in one), "the run must draft something"


def test_thread_count_option_and_environment(monkeypatch):
    monkeypatch.setenv(threads.ENV_VAR, "3")
    assert registry.create("racer", 100, {}).threads.n == 3
    assert registry.create("racer", 100, {"draft_threads": 2}).threads.n == 2
    monkeypatch.setenv(threads.ENV_VAR, "lots")
    with pytest.raises(ConfigError, match="SPECPLUG_DRAFT_THREADS"):
        registry.create("pld", 100, {})
    monkeypatch.delenv(threads.ENV_VAR)
    assert 1 <= threads.default_threads() <= 8
    with pytest.raises(ConfigError, match="draft_threads"):
        registry.create("suffix", 100, {"draft_threads": -1})


def test_small_batches_stay_on_one_thread():
    t = threads.DraftThreads(4)
    assert t.workers(1, 8) == 1 and t.workers(15, 8) == 1 and t.workers(16, 8) == 2 and t.workers(256, 8) == 4


def test_split_rows_balances_weight():
    assert threads.split_rows(np.ones(10), 1) == [(0, 10)]
    ranges = threads.split_rows(np.array([64] * 4 + [1] * 60), 2)
    assert ranges[0][0] == 0 and ranges[-1][1] == 64 and len(ranges) == 2
    assert ranges[0][1] <= 4  # the heavy rows alone are half the weight
    assert threads.split_rows(np.ones(3), 8) == [(0, 1), (1, 2), (2, 3)]


def test_errors_in_a_worker_reach_the_caller():
    def boom():
        raise ValueError("worker failed")

    with pytest.raises(ValueError, match="worker failed"):
        threads.DraftThreads(2).run([lambda: None, boom, lambda: None])
