"""Tree values under the request's sampling: the warped probability of a stored top-k entry,
and RACER's trees and calibration per sampling regime (greedy untouched)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from specplug.drafters.feedback import Feedback, TopK
from specplug.drafters.racer import RacerDrafter
from specplug.drafters.sampling import SamplingParams, warp_logits
from specplug.drafters.tree_build import warped_prob


def _warp(inv_t, top_k, top_p):
    return np.array([inv_t, top_k, top_p], np.float64)


@pytest.mark.parametrize("temperature", [0.6, 0.8, 1.0, 1.3])
@pytest.mark.parametrize("top_k", [0, 3])
@pytest.mark.parametrize("top_p", [1.0, 0.9, 0.5])
def test_warped_prob_is_exact_for_a_whole_row(temperature, top_k, top_p):
    """A row that holds the whole distribution (no tail) is warped exactly like the engine
    warps logits."""
    rng = np.random.default_rng(int(temperature * 10) + top_k)
    p = np.sort(rng.dirichlet(np.ones(6) * 0.7))[::-1].astype(np.float32)
    want = warp_logits(torch.log(torch.tensor(p, dtype=torch.float64)), temperature, top_k, top_p).numpy()
    row = p.astype(np.float32)
    got = np.array([warped_prob(row, r, _warp(1.0 / temperature, top_k, top_p)) for r in range(6)])
    np.testing.assert_allclose(got, want, atol=2e-6)


def test_warped_prob_with_a_tail_and_unknowns():
    row = np.array([0.5, 0.2, 0.1, 0.05], np.float32)  # tail mass 0.15
    greedy = np.zeros(3)
    assert warped_prob(row, 1, greedy) == pytest.approx(0.2)  # no warp: the stored value
    cold = [warped_prob(row, r, _warp(1 / 0.5, 0, 1.0)) for r in range(4)]
    assert cold[0] > 0.5 and cold[3] < 0.05 and sum(cold) < 1.0  # sharper, tail keeps some mass
    # top-p 0.6 under T = 1: ranks 0..1 reach it; rank 2 starts after 0.7 >= 0.6
    nucleus = [warped_prob(row, r, _warp(1.0, 0, 0.6)) for r in range(4)]
    assert nucleus[2] == 0.0 and nucleus[3] == 0.0
    assert nucleus[0] == pytest.approx(0.5 / 0.7) and nucleus[1] == pytest.approx(0.2 / 0.7)
    unknown = np.array([-1.0, -1.0], np.float32)  # ids-only feedback: nothing to warp
    assert warped_prob(unknown, 0, _warp(1.25, 0, 0.95)) == -1.0


def _drafter_with_history():
    d = RacerDrafter(64, tree="dynamic", pair_rows=0)
    ctx = [1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 1, 2]
    d.start("g", ctx)
    d.start("s", ctx)
    # teach the table a flat row after token 2: rank 0 holds 0.3
    topk = TopK.of(
        np.array([[3, 7, 8, 9, 10, 11, 12, 13]], np.int64),
        np.array([[0.3, 0.25, 0.15, 0.1, 0.08, 0.05, 0.04, 0.03]], np.float32),
    )
    d.adjacency.update(np.array([2], np.int32), topk)
    return d


def test_racer_values_trees_by_the_requests_warp():
    d = _drafter_with_history()
    d.set_sampling("s", SamplingParams(0.6, 0, 0.5))
    g, s = d.propose(["g", "s"], [16, 16])
    assert g.tokens[0] == s.tokens[0] == 2
    # the greedy tree is what it is without any sampled request around
    d2 = _drafter_with_history()
    [g2] = d2.propose(["g"], [16])
    assert np.array_equal(g.tokens, g2.tokens) and np.array_equal(g.scores, g2.scores)

    # under T = 0.6 and top-p 0.5 the low ranks of the flat row fall out of the nucleus:
    # the sampled tree values them (far) lower
    def value_of(tree, token):
        kids = np.flatnonzero((tree.parents == 0) & (tree.tokens == token))
        return float(tree.scores[kids[0]]) if kids.shape[0] else 0.0

    assert value_of(s, 9) < value_of(g, 9)
    d.finish("g")
    d.finish("s")
    assert d.active_requests() == 0 and not d._sampling and d.length_calibration.req == {}


def test_racer_keeps_evidence_per_regime():
    d = _drafter_with_history()
    hot = SamplingParams(0.8, 0, 0.95)
    d.set_sampling("s", hot)
    g, s = d.propose(["g", "s"], [8, 8])
    d.observe_batch(Feedback.from_lists(["g", "s"], [g, s], [[int(g.tokens[1]), 5], [9]]))
    trials = d.acceptance.trials.sum(axis=(1, 2))
    assert trials[0] > 0 and trials[hot.regime] > 0  # each request scored its own regime
    assert trials[1] == trials[3] == 0
    rep = d.calibration_report()
    assert {r["regime"] for r in rep["acceptance"]} == {"greedy", "0.7 <= T < 0.9"}
