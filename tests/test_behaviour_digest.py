"""Behaviour is pinned: every algorithm's trees on a fixed stream hash to digests taken
before the drafting-session redesign (commit 4b5e776, through the old list-based observe).

The stream exercises start with prefill top-k (and probabilities where the drafter takes
them), batched propose at mixed budgets (1 included), observe with the target's top-k, a
request leaving and another joining mid-run, and a restart. A digest changes only with an
intended change of trees: update it then, and say so in the change.
"""

import hashlib
import json

import numpy as np
import pytest

from specplug.bench_drafters import SyntheticWorkload, verify_batch
from specplug.drafters import registry
from specplug.drafters.feedback import Feedback, TopK

VARIANTS = [
    ("ar", {}),
    ("pld", {}),
    ("suffix", {}),
    ("racer", {}),
    ("racer", {"tree": "static"}),
    ("racer", {"global_cache": True}),
    ("token-recycling", {}),
    ("token-recycling", {"tree": "dynamic"}),
]
BUDGETS = (1, 8, 16, 40, 64)


def _hash_tree(h, t):
    for a in (np.asarray(t.tokens, np.int64), np.asarray(t.parents, np.int64), np.asarray(t.scores, np.float64)):
        h.update(a.tobytes())
    if t.node_data is not None:
        h.update(np.asarray(t.node_data, np.int64).tobytes())


def model_free_digest(name, opts, steps=24, batch=6, vocab=1500):
    w = SyntheticWorkload(vocab, seed=0, n_snippets=150)
    d = registry.create(name, vocab, opts)
    rng = np.random.default_rng(1)
    streams = np.stack([w.stream(700) for _ in range(batch + 2)])
    probs = d.feedback_probs
    pos = np.full(batch + 2, 120)
    rows = list(range(batch))  # stream row of each batch slot
    rids = list(range(batch))

    def start(rid, row):
        ctx = streams[row, :121]
        ctx_topk = None
        if d.uses_target_topk:
            ids = w.alternatives(ctx[:-1])
            ids[:, 0] = ctx[1:]
            pr = None
            if probs:
                pr = np.linspace(0.6, 0.05, ids.shape[1], dtype=np.float32)[None, :].repeat(ids.shape[0], 0)
            ctx_topk = TopK.of(ids, pr)
        d.start(rid, ctx, ctx_topk)

    for rid, row in zip(rids, rows):
        start(rid, row)
    h = hashlib.sha256()
    for step in range(steps):
        if step == 10:  # one request leaves, a new one joins
            d.finish(rids[2])
            rids[2], rows[2] = 100, batch
            start(100, batch)
        if step == 16:  # a request restarts from its committed context
            d.finish(rids[4])
            start(rids[4], rows[4])
            pos[rows[4]] = 120
        budgets = [int(BUDGETS[int(i)]) for i in rng.integers(len(BUDGETS), size=batch)]
        trees = d.propose(rids, budgets)
        for t in trees:
            _hash_tree(h, t)
        feedback, n = verify_batch(rids, trees, streams[rows], pos[rows], w, probs=probs, topk=d.uses_target_topk)
        d.observe_batch(feedback)
        pos[rows] += n + 1
    for rid in rids:
        d.finish(rid)
    assert d.active_requests() == 0
    return h.hexdigest()[:16]


def early_exit_digest(name, opts, steps=40):
    from test_early_exit import FakeRunner  # noqa: PLC0415 (a test module beside this one)

    L = 8
    runner = FakeRunner(L, agree=np.r_[np.zeros(3), np.linspace(0.5, 1.0, L - 2)])
    d = registry.create(name, 50, opts)
    d.bind(runner)
    h = hashlib.sha256()
    rids = ["a", "b"]
    roots = {"a": 3, "b": 9}
    d.start("a", [1, 2, 3])
    d.start("b", [7, 8, 9])
    for _ in range(steps):
        trees = d.propose(rids, [19, 12])
        accs = []
        for rid, tree in zip(rids, trees):
            _hash_tree(h, tree)
            root = roots[rid]
            truth = [(root + 1 + i) % runner.V for i in range(len(tree))]
            a = 0
            while a < len(tree) - 1 and tree.tokens[a + 1] == truth[a]:
                a += 1
            accs.append(truth[: a + 1])
            roots[rid] = truth[a]
        d.observe_batch(Feedback.from_lists(rids, trees, accs))
    for rid in rids:
        d.finish(rid)
    return h.hexdigest()[:16]


BEFORE = json.loads(open(__file__.replace(".py", ".json")).read())


@pytest.mark.parametrize("name, opts", VARIANTS, ids=[f"{n}{o}" for n, o in VARIANTS])
def test_model_free_trees_are_unchanged(name, opts):
    assert model_free_digest(name, opts) == BEFORE[f"{name} {json.dumps(opts, sort_keys=True)}"]


@pytest.mark.parametrize(
    "name, opts", [("del", {"cost": "layers", "probe_budget": 0.5}), ("early-exit", {"exit_layer": 5, "draft_len": 4})]
)
def test_early_exit_trees_are_unchanged(name, opts):
    assert early_exit_digest(name, opts) == BEFORE[f"{name} {{}}"]
