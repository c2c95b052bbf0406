"""Draft only what can be verified: under the load-aware policy the session asks the drafter
for trees capped near the policy's last choice; the choices and MAT stay those of uncapped
drafting while the drafted nodes shrink."""

import numpy as np
import pytest

from specplug.bench_drafters import SyntheticWorkload, _SessionDriver
from specplug.drafters import registry
from specplug.drafters.budget import BudgetPolicy, CostModel
from specplug.drafters.tree import DraftTree


def run(cap, steps=40, batch=12, padded=False):
    # a cost curve under which some drafts pay: the policy's choices vary between 1 and ~16
    cost = CostModel(np.array([1, 16, 64, 256, 1024]), np.array([0.010, 0.011, 0.016, 0.05, 0.2]), {})
    d = registry.create("racer", 2000, {})
    policy = BudgetPolicy(cost, padded=padded, cap_drafts=cap)
    drv = _SessionDriver(d, SyntheticWorkload(2000, seed=2, n_snippets=80), batch, policy)
    chosen = []
    for _ in range(steps):
        _, trees = drv.step(64)
        chosen.append([len(t) for t in trees])
    drv.close()
    assert d.active_requests() == 0 and not policy._chosen
    return np.array(chosen), drv.accepted_tokens / drv.steps, drv.drafted_nodes


@pytest.mark.parametrize("padded", [False, True])
def test_caps_keep_choices_and_cut_drafting(padded):
    chosen_full, mat_full, drafted_full = run(False, padded=padded)
    chosen_cap, mat_cap, drafted_cap = run(True, padded=padded)
    assert chosen_full.max() > 1, "the cost curve must let some drafts pay"
    assert drafted_cap < 0.5 * drafted_full  # measured: -55% ragged, -76% padded
    assert np.mean(chosen_full == chosen_cap) >= 0.98  # measured: every choice the same
    assert mat_cap >= mat_full - 0.01


def test_caps_follow_the_last_choice_and_refresh():
    cost = CostModel(np.array([1, 1024]), np.array([0.01, 1.0]), {})
    p = BudgetPolicy(cost, padded=False)
    rids = ["a", "b"]
    full = DraftTree.chain(0, [1] * 63)
    assert p.draft_caps(rids, [64, 64]).tolist() == [64, 64]  # new requests draft in full
    p._record(rids, [full, full], np.array([1, 3]))
    assert p.draft_caps(rids, [64, 64]).tolist() == [10, 10]  # 2 x the batch's width + 4
    for _ in range(BudgetPolicy.CAP_REFRESH - 1):
        p._record(rids, [full, full], np.array([1, 3]))
    assert p.draft_caps(rids, [64, 64]).tolist() == [64, 64]  # the periodic uncapped draft
    p._record(rids, [full, full], np.array([1, 3]))
    assert p.draft_caps(rids, [64, 64]).tolist() == [10, 10]
    capped = DraftTree.chain(0, [1] * 9)
    p._record(rids, [capped, capped], np.array([10, 4]))  # a took its whole capped tree
    assert p.draft_caps(rids, [64, 64]).tolist() == [64, 24]
    assert p.draft_caps(["a"] * 8, [64] * 8).tolist() == [64] * 8  # load changed 4x: reset
    p.forget("a")
    assert "a" not in p._chosen
    assert BudgetPolicy(cost, cap_drafts=False).draft_caps(rids, [64, 64]).tolist() == [64, 64]
