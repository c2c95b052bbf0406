"""Property tests of DraftTree: invariants, derived views against naive per-node walks,
truncation, construction helpers and batch packing."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specplug.drafters.errors import DraftTreeError
from specplug.drafters.tree import DraftTree, pack_trees

SETTINGS = settings(max_examples=60, deadline=None)


# ------------------------------------------------------------------ strategies and naive views
@st.composite
def trees(draw, max_nodes=14, vocab=8):
    n = draw(st.integers(1, max_nodes))
    parents = [-1] + [draw(st.integers(0, i - 1)) for i in range(1, n)]
    raw = [draw(st.integers(0, vocab - 1)) for _ in range(n)]
    used: set[tuple[int, int]] = set()
    tokens = []
    for i in range(n):  # bump a token until it is new among its siblings
        t = raw[i]
        while (parents[i], t) in used:
            t += 1
        used.add((parents[i], t))
        tokens.append(t)
    # scores with frequent ties
    scores = [draw(st.one_of(st.sampled_from([0.25, 0.5, 1.0]), st.floats(0, 1))) for _ in range(n)]
    return DraftTree(np.array(tokens), np.array(parents), np.array(scores))


def naive_ancestors(tree, i):
    out = [i]
    while tree.parents[out[-1]] >= 0:
        out.append(int(tree.parents[out[-1]]))
    return out[::-1]  # root first


def children(tree, i):
    return [j for j in range(len(tree)) if tree.parents[j] == i]


def token_path(tree, i):
    return tuple(int(tree.tokens[j]) for j in naive_ancestors(tree, i)[1:])


# ------------------------------------------------------------------ views
@SETTINGS
@given(trees())
def test_depth_mask_positions_path_to(tree):
    n = len(tree)
    mask = np.zeros((n, n), bool)
    for i in range(n):
        anc = naive_ancestors(tree, i)
        assert tree.depth[i] == len(anc) - 1
        mask[i, anc] = True
        assert tree.path_to(i).tolist() == anc
    assert np.array_equal(tree.ancestor_mask, mask)
    assert np.array_equal(tree.positions(7), 7 + tree.depth)
    assert tree.validate() is tree


@SETTINGS
@given(trees())
def test_paths_cover_every_leaf_once(tree):
    n = len(tree)
    leaves = [i for i in range(n) if not children(tree, i)]
    assert np.flatnonzero(tree.is_leaf).tolist() == leaves
    paths = tree.paths
    assert paths.shape == (len(leaves), int(tree.depth.max()) + 1)
    ends = []
    for row in paths:
        nodes = [int(x) for x in row if x >= 0]
        assert np.all(row[len(nodes) :] == -1)  # padding only at the end
        assert nodes == naive_ancestors(tree, nodes[-1])
        ends.append(nodes[-1])
    assert sorted(ends) == leaves


@SETTINGS
@given(trees())
def test_sibling_links_and_best_child(tree):
    n = len(tree)
    for i in range(n):
        kids = children(tree, i)
        assert tree.first_child[i] == (kids[0] if kids else -1)
        if kids:
            best = max(kids, key=lambda j: (tree.scores[j], -j))
            assert tree.best_child[i] == best
        else:
            assert tree.best_child[i] == -1
        sibs = children(tree, int(tree.parents[i])) if i else [0]
        k = sibs.index(i)
        assert tree.next_sibling[i] == (sibs[k + 1] if k + 1 < len(sibs) else -1)


@SETTINGS
@given(trees(), st.one_of(st.none(), st.integers(0, 6)))
def test_best_chain(tree, max_len):
    chain = [0]
    while tree.first_child[chain[-1]] >= 0 and (max_len is None or len(chain) <= max_len):
        kids = children(tree, chain[-1])
        chain.append(max(kids, key=lambda j: (tree.scores[j], -j)))
    assert tree.best_chain(max_len).tolist() == chain
    assert tree.chain_tokens(max_len).tolist() == tree.tokens[chain[1:]].tolist()


@SETTINGS
@given(trees(), st.integers(1, 16))
def test_truncate_keeps_best_closed_subtree(tree, budget):
    small = tree.truncate(budget)
    small.validate(budget=budget)
    n = len(tree)
    assert len(small) == min(budget, n)
    assert small.tokens[0] == tree.tokens[0]
    # nodes are identified by their token path (siblings are distinct)
    index = {token_path(tree, i): i for i in range(n)}
    kept = [index[token_path(small, j)] for j in range(len(small))]  # KeyError: not a subtree
    assert kept == sorted(kept)  # order preserved
    assert np.array_equal(small.scores, tree.scores[kept])
    # effective score: min along the root path (root ranks first)
    eff = np.array([min([np.inf] + [tree.scores[a] for a in naive_ancestors(tree, i)[1:]]) for i in range(n)])
    dropped = sorted(set(range(n)) - set(kept))
    if dropped:
        assert eff[kept].min() >= eff[dropped].max()


def test_truncate_rejects_zero_budget():
    with pytest.raises(DraftTreeError):
        DraftTree.chain(1, [2, 3]).truncate(0)
    t = DraftTree.chain(1, [2, 3])
    assert t.truncate(3) is t


def test_truncate_prefers_high_scores():
    # root -> a(0.9) -> c(0.8); root -> b(0.5): budget 3 keeps a and c, not b
    t = DraftTree([0, 1, 2, 3], [-1, 0, 0, 1], [1.0, 0.9, 0.5, 0.8])
    s = t.truncate(3)
    assert s.tokens.tolist() == [0, 1, 3] and s.parents.tolist() == [-1, 0, 1]


# ------------------------------------------------------------------ validate
@pytest.mark.parametrize(
    "tokens,parents,scores,match",
    [
        ([0, 1, 1], [-1, 0, 0], None, "distinct"),  # duplicate siblings
        ([0, 1, 2], [-1, 0, 2], None, "parents"),  # parent not before child
        ([0, 1, 2], [-1, 0, 5], None, "parents"),  # parent out of range
        ([0, 1, 2], [-1, -1, 0], None, "parents"),  # second root
        ([0, 1], [0, 0], None, "root"),  # root with a parent
        ([], [], None, "root node"),  # empty
        ([0, -3], [-1, 0], None, "token"),  # negative token
        ([0, 1], [-1, 0], [1.0, np.nan], "finite"),  # bad score
        ([0, 1], [-1, 0, 0], None, "equal length"),  # shapes
    ],
)
def test_validate_rejects(tokens, parents, scores, match):
    with pytest.raises(DraftTreeError, match=match):
        DraftTree(np.array(tokens), np.array(parents), None if scores is None else np.array(scores))


def test_validate_budget_and_vocab():
    t = DraftTree([5, 1, 2], [-1, 0, 0])
    t.validate(vocab_size=6, budget=3)
    with pytest.raises(DraftTreeError, match="budget"):
        t.validate(budget=2)
    with pytest.raises(DraftTreeError, match=r"\[0, 5\)"):
        t.validate(vocab_size=5)
    # same token under different parents is fine
    DraftTree([0, 1, 1, 1], [-1, 0, 1, 2])


# ------------------------------------------------------------------ construction helpers
def test_single_and_chain():
    s = DraftTree.single(9)
    assert s.tokens.tolist() == [9] and s.parents.tolist() == [-1] and len(s) == 1
    assert s.best_chain().tolist() == [0] and s.paths.tolist() == [[0]]
    c = DraftTree.chain(4, [5, 6, 7], scores=[0.9, 0.5, 0.2])
    c.validate()
    assert c.tokens.tolist() == [4, 5, 6, 7] and c.parents.tolist() == [-1, 0, 1, 2]
    assert np.allclose(c.scores, [1.0, 0.9, 0.5, 0.2])
    assert c.chain_tokens().tolist() == [5, 6, 7] and c.chain_tokens(2).tolist() == [5, 6]
    assert DraftTree.chain(4, []).tokens.tolist() == [4]


@SETTINGS
@given(
    st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=4), max_size=5),
    st.one_of(st.none(), st.integers(1, 10)),
    st.randoms(use_true_random=False),
)
def test_from_paths_is_the_trie_of_prefixes(paths, budget, rnd):
    scores = [[rnd.random() for _ in p] for p in paths]
    t = DraftTree.from_paths(7, paths, scores, budget=budget)
    t.validate(budget=budget)
    assert t.tokens[0] == 7
    prefixes: dict[tuple, float] = {}
    for p, s in zip(paths, scores):
        for d in range(1, len(p) + 1):
            key = tuple(p[:d])
            prefixes[key] = max(prefixes.get(key, -1.0), s[d - 1])
    got = {token_path(t, i): float(t.scores[i]) for i in range(1, len(t))}
    assert set(got) <= set(prefixes)
    if budget is None:
        assert set(got) == set(prefixes)
    else:
        assert len(t) == min(budget, len(prefixes) + 1)
    for key, s in got.items():  # every path through a kept node passed it: max of all
        assert s == pytest.approx(prefixes[key])
    # first-come order: the first path is inserted first
    if paths and (budget is None or budget > len(paths[0])):
        assert t.tokens[1 : len(paths[0]) + 1].tolist() == list(paths[0])


# ------------------------------------------------------------------ packing
@SETTINGS
@given(st.lists(trees(max_nodes=8), min_size=1, max_size=4), st.integers(0, 3))
def test_pack_trees(tree_list, extra):
    w = max(len(t) for t in tree_list) + extra
    pk = pack_trees(tree_list, width=w)
    b = len(tree_list)
    assert pk.tokens.shape == pk.parents.shape == pk.depth.shape == pk.valid.shape == (b, w)
    assert pk.mask.shape == (b, w, w)
    for i, t in enumerate(tree_list):
        n = len(t)
        assert pk.sizes[i] == n and pk.valid[i].tolist() == [True] * n + [False] * (w - n)
        assert np.array_equal(pk.tokens[i, :n], t.tokens)
        assert np.array_equal(pk.parents[i, :n], t.parents)
        assert np.array_equal(pk.depth[i, :n], t.depth)
        assert np.array_equal(pk.mask[i, :n, :n], t.ancestor_mask)
        # padding: sees only itself, is nobody's ancestor, has no parent
        assert not pk.mask[i, :, n:][~np.eye(w, dtype=bool)[:, n:]].any()
        assert np.array_equal(pk.mask[i, n:], np.eye(w, dtype=bool)[n:])
        assert np.all(pk.parents[i, n:] == -1) and np.all(pk.depth[i, n:] == 0)
        assert np.all(pk.tokens[i, n:] == t.tokens[0])
        assert not np.isin(np.arange(n, w), pk.parents[i]).any()


def test_pack_trees_rejects_narrow_width():
    with pytest.raises(DraftTreeError, match="width"):
        pack_trees([DraftTree.chain(0, [1, 2])], width=2)


def test_pack_empty_batch():
    pk = pack_trees([])
    assert pk.tokens.shape[0] == 0 and pk.mask.shape[0] == 0 and pk.sizes.shape == (0,)
