"""Suffix decoding: longest-match trees, the match-length cap, the global cache, bookkeeping."""

import numpy as np
import pytest
from model_free_helpers import VOCAB, simulate

from specplug.drafters import registry
from specplug.drafters.errors import ConfigError
from specplug.drafters.suffix import SuffixDrafter


def chain_tokens(tree):
    return tree.chain_tokens().tolist()


def test_longest_match_continuation_and_frequency_scores():
    d = SuffixDrafter(100, global_cache=False, max_spec_factor=4.0)
    # "1 2" was followed by 3 twice and by 9 once; the context ends with "1 2"
    d.start("r", [1, 2, 3, 4, 1, 2, 3, 5, 1, 2, 9, 7, 1, 2])
    tree = d.propose(["r"], [64])[0].validate(100, 64)
    assert tree.tokens[0] == 2
    kids = {int(tree.tokens[i]): float(tree.scores[i]) for i in np.flatnonzero(tree.parents == 0)}
    assert kids.keys() == {3, 9}
    assert kids[3] == pytest.approx(2 / 3) and kids[9] == pytest.approx(1 / 3)
    assert chain_tokens(tree)[:1] == [3]
    d.finish("r")


def test_draft_length_capped_by_match_length():
    d = SuffixDrafter(100, global_cache=False, max_spec_factor=1.0)
    long = list(range(10, 30))
    d.start("r", long + [50] + long[:3])  # match "10 11 12": m = 3
    assert len(d.propose(["r"], [64])[0]) == 1 + 3
    d.finish("r")
    d2 = SuffixDrafter(100, global_cache=False, max_spec_factor=2.5)
    d2.start("r", long + [50] + long[:3])
    assert len(d2.propose(["r"], [64])[0]) == 1 + 7
    assert len(d2.propose(["r"], [5])[0]) == 5  # and by the budget


def test_min_token_prob_drops_rare_continuations():
    ctx = []
    for i in range(12):
        ctx += [1, 2, 3 if i else 8]  # "1 2" -> 3 (11 times), -> 8 (once)
    ctx += [1, 2]
    # depth 3: the match is "1 2" (m = 2), continuations 3 (11 of 12) and 8 (1 of 12)
    d = SuffixDrafter(100, global_cache=False, min_token_prob=0.1, max_depth=3, max_spec_factor=4.0)
    d.start("r", ctx)
    kids = d.propose(["r"], [64])[0]
    assert 8 not in kids.tokens[kids.parents == 0]
    d0 = SuffixDrafter(100, global_cache=False, min_token_prob=0.0, max_depth=3, max_spec_factor=4.0)
    d0.start("r", ctx)
    kids = d0.propose(["r"], [64])[0]
    assert 8 in kids.tokens[kids.parents == 0]


def test_global_cache_serves_a_new_request():
    d = SuffixDrafter(100, global_cache=True)
    d.start("a", [1])
    d.observe("a", d.propose(["a"], [8])[0], [60, 61, 62, 63, 64, 65, 66])
    d.finish("a")
    d.start("b", [7, 60, 61, 62])
    tree = d.propose(["b"], [64])[0]
    assert chain_tokens(tree) == [63, 64, 65]  # match "60 61 62": 3 tokens
    d.finish("b")
    assert d.pool.live_nodes == d.pool.owner_nodes(d.global_slot)


@pytest.mark.parametrize(
    "options",
    [{}, {"global_cache": False}, {"max_depth": 4, "min_match": 2}, {"max_nodes_per_request": 2048, "max_depth": 8}],
)
def test_trees_valid_and_state_freed(options):
    d, mat = simulate("suffix", options, budgets=(1, 2, 9, 64), n_requests=10, abandon_every=4)
    assert mat > 1.0
    assert d.pool.live_nodes == (d.pool.owner_nodes(d.global_slot) if d.global_cache else 0)


@pytest.mark.parametrize(
    "opts, match",
    [
        ({"max_depth": 1}, r"\[2, 64\]"),
        ({"min_token_prob": 2.0}, r"\[0.0, 1.0\]"),
        ({"min_match": 24}, "min_match"),
        ({"max_spec_factor": -1}, r"\[0.0, 64.0\]"),
        ({"max_nodes_per_request": 1000}, "64 \\* max_depth|64 \\* ngram"),
    ],
)
def test_bad_options_rejected(opts, match):
    with pytest.raises(ConfigError, match=match):
        registry.create("suffix", VOCAB, opts)


def test_budget_one_and_registry():
    d = SuffixDrafter(100)
    d.start("r", [1, 2, 1, 2, 1, 2])
    assert len(d.propose(["r"], [1])[0]) == 1
    d.finish("r")
    assert registry.get("suffix").default_budget == 64 and not registry.get("suffix").uses_target_topk
