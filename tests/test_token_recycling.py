"""Token Recycling: the static template, its truncation, adjacency learning, bookkeeping."""

import numpy as np
import pytest
from model_free_helpers import VOCAB, simulate

from specplug.drafters import registry
from specplug.drafters.errors import ConfigError
from specplug.drafters.feedback import TopK
from specplug.drafters.token_recycling import TokenRecyclingDrafter
from specplug.drafters.tree import DraftTree
from specplug.drafters.tree_build import best_first_template


def template_depths(parents):
    d = np.zeros(len(parents), int)
    for i in range(1, len(parents)):
        d[i] = d[parents[i]] + 1
    return d


def test_default_template_shape():
    parents, ranks, scores = best_first_template([0.5, 0.15, 0.08, 0.05, 0.04, 0.03, 0.025, 0.02], 80, 6)
    assert len(parents) == 81
    depth = template_depths(parents)
    assert depth.max() == 6
    per_level = np.bincount(depth)
    assert per_level.tolist() == [1, 8, 23, 28, 14, 6, 1]  # documented shape
    assert np.all(parents[1:] < np.arange(1, 81))  # parents first
    assert np.all(np.diff(scores[1:]) <= 1e-7)  # value order: prefixes are best
    DraftTree(np.arange(81), parents).validate()  # a valid tree shape


def full_table(d, vocab, rng):
    rows = np.stack([rng.permutation(vocab)[: d.topk] for _ in range(vocab)])
    d.adjacency.update(np.arange(vocab), TopK.of(rows))
    return rows


@pytest.mark.parametrize("budget", [1, 2, 5, 17, 40, 81, 200])
def test_template_truncated_by_rank_order(budget):
    rng = np.random.default_rng(budget)
    d = TokenRecyclingDrafter(50)
    rows = full_table(d, 50, rng)
    d.start("r", [3, 7])
    tree = d.propose(["r"], [budget])[0].validate(50, budget)
    n = min(budget, 81)
    assert len(tree) == n
    np.testing.assert_array_equal(tree.parents, d.t_parent[:n])  # the template's first n nodes
    for i in range(1, n):  # node = rank-th candidate of parent
        assert tree.tokens[i] == rows[tree.tokens[tree.parents[i]], d.t_rank[i]]
    assert tree.tokens[0] == 7


def test_learns_from_verification_and_prefill():
    d = TokenRecyclingDrafter(100)
    d.start("r", [1, 2, 3], TopK.of([[2, 9, 8, 7, 6, 5, 4, 10], [3, 11, 12, 13, 14, 15, 16, 17]]))
    assert len(d.propose(["r"], [81])[0]) == 1  # nothing known after 3
    d.start("s", [5, 1])  # another request: shared table
    tree = d.propose(["s"], [81])[0]
    assert tree.tokens[0] == 1 and tree.tokens[tree.best_child[0]] == 2
    d.observe("s", tree, [2, 3], TopK.of(np.tile(np.array([[3, 50, 51, 52, 53, 54, 55, 56]]), (len(tree), 1))))
    tree_r = d.propose(["r"], [81])[0]
    d.observe("r", tree_r, [40], TopK.of(np.tile(np.array([[40, 41, 42, 43, 44, 45, 46, 47]]), (len(tree_r), 1))))
    tree = d.propose(["s"], [81])[0]  # root 3 (s), row of 3 last written by r
    assert tree.tokens[0] == 3 and tree.tokens[tree.best_child[0]] == 40
    for r in ("r", "s"):
        d.finish(r)
    assert d.active_requests() == 0


def test_skips_unknown_rows_and_duplicate_candidates():
    d = TokenRecyclingDrafter(20)
    d.adjacency.update([4], TopK.of([[5, 5, 6, -1, -1, -1, -1, -1]]))  # duplicate and empty entries
    d.start("r", [4])
    tree = d.propose(["r"], [81])[0].validate(20, 81)
    assert sorted(tree.tokens[1:].tolist()) == [5, 6]


@pytest.mark.parametrize("budgets", [(1,), (1, 3, 81, 128)])
def test_trees_valid_and_state_freed(budgets):
    d, mat = simulate("token-recycling", {}, budgets=budgets, n_requests=8, abandon_every=3)
    assert d.active_requests() == 0
    assert mat >= 1.0


@pytest.mark.parametrize(
    "opts, match",
    [
        ({"topk": 0}, r"\[1, 32\]"),
        ({"template_nodes": 0}, r"\[1, 1023\]"),
        ({"template_depth": 0}, r"\[1, 64\]"),
        ({"k": 3}, "valid options"),
    ],
)
def test_bad_options_rejected(opts, match):
    with pytest.raises(ConfigError, match=match):
        registry.create("token-recycling", VOCAB, opts)


def test_bad_inputs_and_registry():
    d = TokenRecyclingDrafter(10)
    with pytest.raises(ConfigError, match="vocab"):
        d.start("r", [11])
    with pytest.raises(ConfigError, match="call start"):
        d.propose(["x"], [4])
    spec = registry.get("token-recycling")
    assert spec.uses_target_topk and spec.default_budget == 81
