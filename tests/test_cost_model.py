"""Cost models measured where they run: the (batch, width) grid, the on-disk cache keyed by
what the timing depends on, and the policy's promise never to pick a loss."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specplug.drafters import cost_cache
from specplug.drafters.budget import BudgetPolicy, CostModel, choose_budgets
from specplug.drafters.cost_cache import cached_cost_model
from specplug.drafters.tree import DraftTree


def plane(b, w):  # a made-up step cost: fixed + per row + per token
    return 0.05 + 0.002 * b + 0.001 * b * w


def grid_points(batches=(1, 4, 16), widths=(1, 2, 4, 8, 16, 32, 64), cap=256):
    return [
        {"tokens": b * w, "batch": b, "width": w, "seconds": plane(b, w)}
        for b in batches
        for w in widths
        if b * w <= cap
    ]


def test_grid_prices_a_padded_pass_by_batch_and_width():
    m = CostModel.from_points(grid_points())
    assert m.is_grid
    for b, w in [(1, 1), (1, 8), (1, 64), (2, 1), (2, 8), (4, 16), (16, 16), (32, 8), (64, 2)]:
        assert m.step(b, [w])[0] == pytest.approx(plane(b, w)), (b, w)
    # same total, different shape: a batch-1 pass of 8 tokens is cheaper than 8 rows of 1
    assert m.step(1, [8])[0] < m.step(8, [1])[0]
    # JSON round trip keeps the grid
    again = CostModel.from_points(m.points())
    assert again.is_grid and again.step(3, [5])[0] == pytest.approx(m.step(3, [5])[0])


def test_points_without_a_grid_price_by_total_tokens():
    pts = [{"tokens": t, "seconds": 0.1 + 0.01 * t} for t in (1, 2, 4, 64)]
    m = CostModel.from_points(pts)
    assert not m.is_grid and m.step(4, [2])[0] == pytest.approx(m(8))
    one_width = [{"tokens": b, "batch": b, "width": 1, "seconds": 0.1 * b} for b in (1, 2, 4)]
    assert not CostModel.from_points(one_width).is_grid  # a batch row needs >= 2 widths


# ------------------------------------------------------------------ the cache
KEY = {"engine": "embedded", "model": "m", "threads": 1, "torch": "2.13"}


def counting_measure(calls):
    def measure():
        calls.append(1)
        return grid_points(batches=(1, 4), widths=(1, 2, 4))

    return measure


def test_measured_once_then_read_from_the_cache(tmp_path):
    calls = []
    first = cached_cost_model(KEY, counting_measure(calls), directory=str(tmp_path))
    again = cached_cost_model(KEY, counting_measure(calls), directory=str(tmp_path))
    assert len(calls) == 1 and (first.source, again.source) == ("measured", "cache")
    assert again.path == first.path and again.model.step(4, [2])[0] == pytest.approx(plane(4, 2))
    assert first.measure_s >= 0 and again.describe()["key"]["model"] == "m"


@pytest.mark.parametrize("field", ["model", "threads", "torch"])
def test_a_changed_key_measures_again(tmp_path, field):
    calls = []
    cached_cost_model(KEY, counting_measure(calls), directory=str(tmp_path))
    other = cached_cost_model({**KEY, field: "other"}, counting_measure(calls), directory=str(tmp_path))
    assert len(calls) == 2 and other.source == "measured"
    assert len(os.listdir(tmp_path)) == 2


@pytest.mark.parametrize(
    "damage",
    [
        "{not json",
        json.dumps({"key": KEY, "points": []}),
        json.dumps({"points": [{"tokens": 1, "seconds": 1}]}),
        json.dumps({"key": {**KEY, "format": cost_cache.FORMAT, "model": "another"}, "points": grid_points()}),
        "",
    ],
)
def test_a_corrupt_or_foreign_cache_file_is_measured_again_with_a_warning(tmp_path, damage):
    calls = []
    first = cached_cost_model(KEY, counting_measure(calls), directory=str(tmp_path))
    with open(first.path, "w", encoding="utf-8") as f:
        f.write(damage)
    with pytest.warns(RuntimeWarning, match="measuring the cost model again"):
        again = cached_cost_model(KEY, counting_measure(calls), directory=str(tmp_path))
    assert again.source == "measured" and len(calls) == 2
    assert cached_cost_model(KEY, counting_measure(calls), directory=str(tmp_path)).source == "cache"


def test_the_cache_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(cost_cache, "MAX_FILES", 3)
    for i in range(6):
        cached_cost_model({**KEY, "model": f"m{i}"}, counting_measure([]), directory=str(tmp_path))
    assert len(os.listdir(tmp_path)) == 3


def test_an_unwritable_cache_still_gives_a_model(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a file where the directory should be
    got = cached_cost_model(KEY, counting_measure([]), directory=str(blocker / "sub"))
    assert got.source == "measured" and got.model.is_grid


def test_the_cache_follows_specplug_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("SPECPLUG_CACHE", str(tmp_path))
    assert cost_cache.cost_cache_dir() == str(tmp_path / "cost_models")


# ------------------------------------------------------------------ never a loss
cost_grids = st.builds(
    lambda fixed, per_row, per_token, jump: CostModel.from_points(
        [
            {
                "tokens": b * w,
                "batch": b,
                "width": w,
                "seconds": fixed + per_row * b + per_token * b * w + (jump if w > 1 else 0.0),
            }
            for b in (1, 4, 16)
            for w in (1, 2, 4, 8, 16, 32, 64)
            if b * w <= 256
        ]
    ),
    st.floats(0.001, 0.1),
    st.floats(0.0, 0.01),
    st.floats(0.0, 0.01),
    st.floats(0.0, 0.05),  # this CPU: the second token of a row costs far more than the first
)
gain_lists = st.lists(
    st.lists(st.floats(0.0, 1.0), min_size=0, max_size=40).map(lambda g: np.sort(np.array(g))[::-1]),
    min_size=1,
    max_size=12,
)


@settings(max_examples=150, deadline=None)
@given(cost_grids, gain_lists, st.floats(0.05, 2.0))
def test_the_policy_never_picks_a_tree_that_loses_to_budget_one(cost, gains, ratio):
    """The chosen budgets' expected goodput under the cost model is at least budget 1's."""
    b = len(gains)
    for padded in (True, False):
        budgets, goodput, _ = choose_budgets(gains, cost, max_budget=64, ratio=ratio, padded=padded)
        assert budgets.shape == (b,) and np.all(budgets >= 1)
        expected = b + ratio * sum(float(np.sum(g[: n - 1])) for g, n in zip(gains, budgets.tolist()))
        width = int(budgets.max()) if padded else budgets.sum() / b  # ragged: its mean width
        seconds = cost.step(b, [width])[0]
        base = b / cost.step(b, [1])[0]
        assert expected / seconds >= base * (1 - 1e-9)
        assert goodput == pytest.approx(expected / seconds, rel=1e-6)


def test_policy_cuts_trees_to_the_root_when_a_node_costs_more_than_it_gains():
    # this machine's shape: width 2 costs 1.6x width 1; half a token more per step does not pay
    pts = [
        {"tokens": w, "batch": 1, "width": w, "seconds": 0.07 if w == 1 else 0.11 + 0.002 * w} for w in (1, 2, 8, 64)
    ]
    policy = BudgetPolicy(CostModel.from_points(pts))
    tree = DraftTree.chain(5, [6, 7, 8], np.array([0.3, 0.15, 0.05], np.float32))
    assert len(policy.apply([tree], [4])[0]) == 1
    sure = DraftTree.chain(5, [6, 7, 8], np.array([0.95, 0.9, 0.85], np.float32))
    assert len(policy.apply([sure], [4])[0]) == 4


def test_root_only_steps_do_not_wash_out_a_requests_evidence():
    """Under the policy most low-acceptance steps verify the root alone (expected 0, realised
    0). They must not decay a request's record at the speculative-step rate: else after a few
    of them its next drafts are priced at the (optimistic) global ratio again."""
    from specplug.drafters.calibration import LengthCalibration

    cal = LengthCalibration()
    cal.update(["good"] * 20, [4.0] * 20, [4.0] * 20)  # the global record: drafts pay
    for _ in range(10):
        cal.update(["r"], [3.0], [0.3])  # this request's drafts: a tenth of the estimate
    bad = cal.ratio("r")
    assert bad < 0.3
    for _ in range(5):
        cal.update(["r"], [0.0], [0.0])  # five steps at budget 1
    assert cal.ratio("r") < 0.35  # still known as a poor drafter ...
    for _ in range(200):
        cal.update(["r"], [0.0], [0.0])
    assert cal.ratio("r") == pytest.approx(cal.global_ratio(), abs=0.02)  # ... fading to the prior
    assert cal.total[0] == 30  # root-only steps are not counted as calibration steps
