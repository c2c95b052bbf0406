"""Dynamic tree expansion (drafters/dynamic_tree.py) against brute force on small graphs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specplug.drafters.calibration import NBINS
from specplug.drafters.dynamic_tree import build_dynamic


def _random_graph(rng, nkeys, k, leaf_frac=0.1, empty_frac=0.1):
    """A dense candidate graph: distinct tokens per row, values sorted best first."""
    ctok = np.full((nkeys, k), -1, np.int32)
    cval = np.zeros((nkeys, k), np.float32)
    ckey = np.full((nkeys, k), -1, np.int32)
    for key in range(nkeys):
        m = int(rng.integers(0, k + 1)) if rng.random() < empty_frac else k
        toks = rng.choice(50, size=m, replace=False)
        vals = np.sort(rng.uniform(0.01, 1.0, size=m))[::-1]
        ctok[key, :m] = toks
        cval[key, :m] = vals
        ckey[key, :m] = np.where(rng.random(m) < leaf_frac, -1, rng.integers(0, nkeys, m))
    return ctok, cval, ckey


def _brute_force(ctok, cval, ckey, root_key, budget, max_depth):
    """Max total value over all ancestor-closed trees of <= budget nodes (root included)."""
    # candidate tree nodes: (path of ranks) -> (value, key, depth)
    best = 0.0
    frontier0 = []

    def children(path, value, key, depth):
        out = []
        if key < 0 or depth >= max_depth:
            return out
        for r in range(ctok.shape[1]):
            if ctok[key, r] < 0:
                break
            out.append((path + (r,), value * float(cval[key, r]), int(ckey[key, r]), depth + 1))
        return out

    frontier0 = children((), 1.0, root_key, 0)
    seen = set()

    def rec(chosen, frontier, total):
        nonlocal best
        best = max(best, total)
        if len(chosen) + 1 >= budget:
            return
        for j, node in enumerate(frontier):
            key = tuple(sorted(chosen + (node[0],)))
            if key in seen:
                continue
            seen.add(key)
            rest = frontier[:j] + frontier[j + 1 :] + children(*node)
            rec(chosen + (node[0],), rest, total + node[1])

    rec((), frontier0, 0.0)
    return best


def _value(tree):
    return float(np.sum(tree.scores[1:], dtype=np.float64))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), budget=st.integers(1, 6), k=st.integers(1, 3), depth=st.integers(1, 4))
def test_greedy_expansion_is_maximal_value(seed, budget, k, depth):
    rng = np.random.default_rng(seed)
    ctok, cval, ckey = _random_graph(rng, 6, k)
    root_key = int(rng.integers(0, 6))
    [tree] = build_dynamic(ctok, cval, ckey, [7], [root_key], [budget], max_depth=depth)
    tree.validate(budget=budget)
    want = _brute_force(ctok, cval, ckey, root_key, budget, depth)
    assert _value(tree) == pytest.approx(want, rel=1e-5, abs=1e-6)
    # budget used fully whenever the candidate tree is big enough
    assert len(tree) <= budget


def test_node_scores_are_path_products_and_tokens_follow_rows():
    rng = np.random.default_rng(3)
    ctok, cval, ckey = _random_graph(rng, 20, 4, empty_frac=0.0, leaf_frac=0.0)
    [tree] = build_dynamic(ctok, cval, ckey, [5], [2], [40], max_depth=8)
    tree.validate(budget=40)
    assert len(tree) == 40
    keys = np.full(len(tree), -1)
    keys[0] = 2
    for i in range(1, len(tree)):  # test-side reference walk
        p = tree.parents[i]
        r = int(np.flatnonzero(ctok[keys[p]] == tree.tokens[i])[0])
        keys[i] = ckey[keys[p], r]
        assert tree.scores[i] == pytest.approx(tree.scores[p] * cval[keys[p], r], rel=1e-5)
    # insertion order is value order (so every prefix is the best tree of its size)
    assert np.all(np.diff(tree.scores[1:]) <= 1e-7)


def test_batch_budgets_depth_cap_and_missing_rows():
    rng = np.random.default_rng(1)
    ctok, cval, ckey = _random_graph(rng, 10, 3, empty_frac=0.0)
    roots = np.arange(5, dtype=np.int32)
    trees = build_dynamic(ctok, cval, ckey, roots, [0, 1, 2, -1, 99], [1, 8, 16, 8, 8], max_depth=2)
    assert [len(t) for t in trees][:1] == [1]
    assert len(trees[3]) == 1 and len(trees[4]) == 1  # no row for the root key: no speculation
    for t, r in zip(trees, roots):
        t.validate(budget=16)
        assert t.tokens[0] == r
        assert t.depth.max() <= 2


def test_calibrated_values_and_unknown_probabilities():
    # one row chain: key 0 -> token 1 (key 1) -> token 2 (key 2) ...
    k = 2
    ctok = np.array([[1, 9], [2, 8], [3, 7], [-1, -1]], np.int32)
    ckey = np.array([[1, -1], [2, -1], [3, -1], [-1, -1]], np.int32)
    raw = np.array([[0.95, 0.02], [-1.0, -1.0], [0.55, 0.3], [0, 0]], np.float32)
    cal = np.zeros((k, NBINS + 1))
    cal[0, :NBINS] = 0.9
    cal[1, :NBINS] = 0.05
    cal[0, NBINS] = 0.5
    cal[1, NBINS] = 0.2
    [t] = build_dynamic(ctok, raw, ckey, [0], [0], [4], cal=cal)
    # values: 0.9 (rank 0), then 0.9*0.5 (unknown prob, rank 0) ...
    assert t.tokens.tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(t.scores, [1.0, 0.9, 0.45, 0.405], rtol=1e-5)
    [t2] = build_dynamic(ctok, raw, ckey, [0], [0], [4], cal=cal, alphas=[0.1])
    # alpha shrinks every edge: the wide option (rank-1 siblings) can win over depth
    assert t2.scores[1] == pytest.approx(0.09, rel=1e-5)


def test_pair_rows_override_token_rows():
    from specplug.drafters.adjacency import PairAdjacency

    vocab, k = 12, 2
    rows = np.full((vocab, k), -1, np.int32)
    probs = np.full((vocab, k), -1.0, np.float32)
    rows[5] = [6, 7]
    probs[5] = [0.6, 0.3]
    rows[6] = [1, 2]
    probs[6] = [0.5, 0.4]
    pairs = PairAdjacency(vocab, k, 16, probs=True)
    # the pair (5, 6) was followed by 3 (p 0.9): drafted instead of token 6's row
    from specplug.drafters.tree import DraftTree

    tree = DraftTree(np.array([6]), np.array([-1]))
    from specplug.drafters.feedback import Feedback, TopK

    feedback = Feedback.one(0, tree, [3], TopK.of(np.array([[3, 4]]), np.array([[0.9, 0.05]], np.float32)))
    pairs.update_from_feedback(feedback, [5])
    [t] = build_dynamic(rows, probs, rows, [5], [5], [3], pairs=(pairs.rows, pairs.probs, pairs.keys), root_prevs=[-1])
    assert t.tokens.tolist() == [5, 6, 3]
    np.testing.assert_allclose(t.scores, [1.0, 0.6, 0.54], rtol=1e-5)


# ---------------------------------------------------------------------------- drafters in dynamic mode
from model_free_helpers import simulate  # noqa: E402

from specplug.drafters import registry  # noqa: E402
from specplug.drafters.errors import ConfigError  # noqa: E402
from specplug.drafters.feedback import TopK  # noqa: E402


@pytest.mark.parametrize(
    "name,options",
    [
        ("racer", {"tree": "dynamic"}),
        ("racer", {"tree": "dynamic", "pair_rows": 0}),
        ("racer", {"tree": "dynamic", "fusion": "retrieval-first"}),
        ("token-recycling", {"tree": "dynamic"}),
        ("token-recycling", {"tree": "dynamic", "dynamic_depth": 2}),
    ],
)
def test_dynamic_drafters_trees_valid_and_state_freed(name, options):
    d, mat = simulate(name, options, budgets=(1, 2, 7, 64, 100), n_requests=10)
    assert mat > 1.0
    assert d.active_requests() == 0
    assert d.length_calibration.req == {}
    rep = d.calibration_report()
    assert rep["length"]["steps"] > 0
    assert rep["token_rows"], "edge calibration saw no evidence"
    cal = d.adjacency.calibration.table()
    assert np.all((cal > 0) & (cal <= 1))
    assert np.all(np.diff(cal[:, :-1], axis=1) >= 0) and np.all(np.diff(cal, axis=0) <= 0)


def test_dynamic_tree_follows_the_target_probabilities():
    """A confident row grows a deep chain; an uncertain one a wide, shallow tree."""
    d = registry.create("token-recycling", 50, {"tree": "dynamic", "topk": 4})
    conf = np.array([[0.97, 0.01, 0.01, 0.01]], np.float32)
    flat = np.array([[0.3, 0.25, 0.2, 0.15]], np.float32)
    for t in range(1, 40):  # confident chain 1 -> 2 -> ... ; token 40 uncertain
        d.adjacency.update([t], TopK.of(np.array([[t + 1, 45, 46, 47]]), conf))
    d.adjacency.update([40], TopK.of(np.array([[41, 42, 43, 44]]), flat))
    d.start("a", [1])
    d.start("b", [40])
    ta, tb = d.propose(["a", "b"], [12, 12])
    assert ta.depth.max() > 3 * tb.depth.max() or tb.depth.max() == 1
    assert (tb.parents == 0).sum() >= 3  # the flat row is drafted wide
    with pytest.raises(ConfigError, match="shape"):
        d.observe("a", ta, [2], TopK.of(np.zeros((len(ta), 4), np.int32), np.zeros((1, 4), np.float32)))
    with pytest.raises(ConfigError, match="tree nodes"):
        d.observe("a", ta, [2], TopK.of(np.zeros((len(ta) + 1, 4), np.int32), np.zeros((len(ta) + 1, 4))))


@pytest.mark.parametrize(
    "name,opts,match",
    [
        ("racer", {"tree": "bushy"}, "tree"),
        ("token-recycling", {"tree": 1}, "tree"),
        ("token-recycling", {"dynamic_depth": 0}, "dynamic_depth"),
    ],
)
def test_bad_tree_options_rejected(name, opts, match):
    with pytest.raises(ConfigError, match=match):
        registry.create(name, 100, opts)


def test_static_mode_ignores_probabilities_and_keeps_memory():
    d = registry.create("racer", 1000, {"tree": "static"})
    assert not d.feedback_probs
    d2 = registry.create("racer", 1000, {})  # dynamic is RACER's default
    assert d2.tree == "dynamic" and d2.feedback_probs and d2.global_nbytes() > d.global_nbytes()
    assert registry.create("token-recycling", 1000, {}).tree == "static"  # its template stays the default
    # static drafters accept top-k with probabilities too (engines may send them)
    d.start(0, [1, 2, 3], TopK.of(np.array([[2, 5], [3, 6]]), np.array([[0.5, 0.2], [0.6, 0.1]], np.float32)))
    [t] = d.propose([0], [8])
    d.observe(0, t, [4], TopK.of(np.full((len(t), 8), 7), np.full((len(t), 8), 0.1, np.float32)))
    d.finish(0)


# ---------------------------------------------------------------------------- CLI: --tree
def test_bench_tree_variants_and_errors():
    from specplug.bench import parse_algorithms, parse_tree_modes, resolve_budgets, split_variant

    assert parse_algorithms("racer,pld", parse_tree_modes("static,dynamic")) == [
        "ar",
        "racer[static]",
        "racer[dynamic]",
        "pld",
    ]
    assert parse_algorithms("racer[dynamic],token-recycling", None) == ["ar", "racer[dynamic]", "token-recycling"]
    assert split_variant("token_recycling[dynamic]", {"topk": 4}) == ("token-recycling", {"topk": 4, "tree": "dynamic"})
    assert resolve_budgets(["ar", "racer[dynamic]"], None) == {"ar": 1, "racer[dynamic]": 64}
    for bad, match in (
        ("pld[dynamic]", "no tree modes"),
        ("racer[bushy]", "NAME\\[static\\]"),
        ("racer[dynamic", "NAME\\[static\\]"),
    ):
        with pytest.raises(ConfigError, match=match):
            split_variant(bad)
    with pytest.raises(ConfigError, match="--tree"):
        parse_tree_modes("static,bushy")


@pytest.mark.parametrize(
    "argv,match",
    [
        (["x", "-a", "pld", "--tree", "dynamic"], "no tree modes"),
        (["x", "-a", "racer", "--load-aware", "nosuchmodel"], "no cost model"),
    ],
)
def test_generate_tree_and_policy_errors(argv, match, capsys):
    from specplug import cli

    assert cli.main(["generate", *argv]) == 2
    assert match in capsys.readouterr().err
