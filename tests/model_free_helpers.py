"""Shared checks for the model-free tree drafters (racer, token-recycling, suffix): a simulated
engine loop (greedy verification against known token streams, see specplug.bench_drafters)
that validates every proposed tree and the drafters' state bookkeeping."""

from __future__ import annotations

import numpy as np

from specplug.bench_drafters import SyntheticWorkload, verify_batch
from specplug.drafters import registry
from specplug.drafters.feedback import TopK

VOCAB = 600


def context_topk(work: SyntheticWorkload, ctx: np.ndarray) -> TopK:
    """What prefill would give: the next token first, then fixed alternatives."""
    ids = work.alternatives(np.asarray(ctx[:-1]))
    ids[:, 0] = ctx[1:]
    return TopK.of(ids)


def simulate(
    name: str,
    options=None,
    *,
    n_requests=12,
    batch=4,
    budgets=(64,),
    seed=0,
    steps_per_request=12,
    vocab=VOCAB,
    drafter=None,
    abandon_every=0,
):
    """Run requests through start/propose/observe/finish; validate every tree.

    Returns (drafter, mean accepted tokens per step). ``abandon_every`` > 0 finishes every
    such request right after start (an aborted request: no observe).
    """
    work = SyntheticWorkload(vocab, seed, n_snippets=60, topk=8)
    d = drafter or registry.create(name, vocab, options)
    rng = np.random.default_rng(seed)
    rid = 0
    steps = tokens = 0
    pending = n_requests
    while pending > 0:
        b = min(batch, pending)
        pending -= b
        streams = np.zeros((b, 400 + steps_per_request * 80), np.int64)
        pos = np.zeros(b, np.int64)
        rids = []
        for i in range(b):
            p = int(rng.integers(20, 200))
            s = work.stream(p + steps_per_request * 70)
            streams[i, : s.shape[0]] = s
            pos[i] = p - 1
            ctx = s[:p]
            d.start(rid, ctx, context_topk(work, ctx) if d.uses_target_topk else None)
            rids.append(rid)
            rid += 1
        if abandon_every:
            keep = [i for i, r in enumerate(rids) if r % abandon_every]
            for r in rids:
                if r % abandon_every == 0:
                    d.finish(r)
            rids = [rids[i] for i in keep]
            streams, pos = streams[keep], pos[keep]
        for _ in range(steps_per_request):
            if not rids:
                break
            bud = [int(budgets[int(rng.integers(len(budgets)))]) for _ in rids]
            trees = d.propose(rids, bud)
            assert len(trees) == len(rids)
            for i, (t, bb) in enumerate(zip(trees, bud)):
                t.validate(vocab, bb)
                assert len(t) <= bb
                assert t.tokens[0] == streams[i, pos[i]], "root must be the last committed token"
                if bb == 1:
                    assert len(t) == 1
                assert np.all(t.scores[1:] <= t.scores[t.parents[1:]] + 1e-6), "children outscore parents"
            feedback, acc = verify_batch(
                rids, trees, streams, pos, work, probs=d.feedback_probs, topk=d.uses_target_topk
            )
            d.observe_batch(feedback)
            pos += acc + 1
            steps += len(rids)
            tokens += int(acc.sum()) + len(rids)
        for r in rids:
            d.finish(r)
    assert d.active_requests() == 0
    return d, tokens / max(steps, 1)
