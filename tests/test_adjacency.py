"""The shared logit adjacency table against a brute-force dictionary."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specplug.drafters.adjacency import AdjacencyTable, PairAdjacency, _pair_slot
from specplug.drafters.errors import ConfigError
from specplug.drafters.feedback import Feedback, TopK
from specplug.drafters.tree import DraftTree


def brute_update(table: dict, tokens, topk, vocab, k):
    for t, row in zip(tokens, topk):
        if not 0 <= t < vocab:
            continue
        row = [int(x) if 0 <= x < vocab else -1 for x in row[:k]]
        table[int(t)] = row + [-1] * (k - len(row))


def as_array(table: dict, vocab, k):
    out = np.full((vocab, k), -1, np.int32)
    for t, row in table.items():
        out[t] = row
    return out


@settings(max_examples=60, deadline=None)
@given(data=st.data(), vocab=st.integers(1, 12), k=st.integers(1, 5), width=st.integers(1, 7))
def test_update_and_seed_match_brute_force(data, vocab, k, width):
    adj = AdjacencyTable(vocab, k)
    ref = {}
    for _ in range(data.draw(st.integers(1, 4))):
        n = data.draw(st.integers(1, 10))
        tokens = data.draw(st.lists(st.integers(-1, vocab), min_size=n, max_size=n))  # some out of range
        topk = data.draw(
            st.lists(st.lists(st.integers(-2, vocab + 1), min_size=width, max_size=width), min_size=n, max_size=n)
        )
        if data.draw(st.booleans()) and all(0 <= t < vocab for t in tokens):
            adj.seed(tokens + [0], TopK.of(topk))  # prefill: topk[i] follows tokens[i], last token has none
        else:
            adj.update(tokens, TopK.of(topk))
        brute_update(ref, tokens, topk, vocab, k)
        np.testing.assert_array_equal(adj.rows, as_array(ref, vocab, k))


def test_update_from_trees_batches_like_single_updates():
    rng = np.random.default_rng(0)
    vocab, k = 50, 4
    batched, single = AdjacencyTable(vocab, k), AdjacencyTable(vocab, k)
    trees, topks = [], []
    for b in range(6):
        n = int(rng.integers(1, 9))
        trees.append(DraftTree(rng.integers(0, vocab, n), np.arange(-1, n - 1)))
        topks.append(None if b == 2 else rng.integers(0, vocab, (n, 3 if b == 4 else 6)))
    feedback = Feedback.from_lists(range(6), trees, [[0]] * 6, [None if x is None else TopK.of(x) for x in topks])
    batched.update_from_feedback(feedback)
    for t, x in zip(trees, topks):
        if x is not None:
            single.update(t.tokens, TopK.of(x))
    np.testing.assert_array_equal(batched.rows, single.rows)
    assert (batched.rows != -1).any()


def test_shapes_and_options_rejected():
    adj = AdjacencyTable(10, 4)
    with pytest.raises(ConfigError, match=r"len\(context_ids\) - 1"):
        adj.seed([1, 2, 3], TopK.of(np.zeros((3, 4), np.int32)))
    with pytest.raises(ConfigError):
        adj.update([1, 2], TopK.of(np.zeros((3, 4), np.int32)))
    with pytest.raises(ConfigError, match="tree nodes"):
        Feedback.from_lists([0], [DraftTree([1, 2], [-1, 0])], [[2]], [TopK.of(np.zeros((3, 4), np.int32))])
    with pytest.raises(ConfigError, match="tree node"):  # flat top-k: one row per node of every tree
        Feedback(
            [0],
            [DraftTree([1, 2], [-1, 0])],
            np.array([2], np.int32),
            np.array([0, 1]),
            TopK.of(np.zeros((3, 4), np.int32)),
        )
    with pytest.raises(ConfigError, match=r"\[positions, k\]"):
        TopK.of(np.zeros(4, np.int32))
    with pytest.raises(ConfigError, match="ids' shape"):
        TopK.of(np.zeros((2, 4), np.int32), np.zeros((2, 3), np.float32))
    with pytest.raises(ConfigError, match=r"\[1, 64\]"):
        AdjacencyTable(10, 0)
    assert AdjacencyTable(49152, 8).nbytes() == 49152 * 8 * 4


# --------------------------------------------------------------------------- pair-keyed rows
def owned_slots(pairs: PairAdjacency, keys):
    """Slots that exactly one of the given pair keys hashes to (collisions are allowed to evict)."""
    slots = [int(_pair_slot(p, t, pairs.vocab_size, pairs.keys.shape[0] - 1)[1]) for p, t in keys]
    return {k for k, s in zip(keys, slots) if slots.count(s) == 1}


@settings(max_examples=60, deadline=None)
@given(data=st.data(), vocab=st.integers(2, 12), k=st.integers(1, 5))
def test_pair_rows_match_brute_force(data, vocab, k):
    pairs = PairAdjacency(vocab, k, 4096)
    ref = {}
    for _ in range(data.draw(st.integers(1, 4))):
        tokens, parents = [data.draw(st.integers(0, vocab - 1))], [-1]
        for _ in range(data.draw(st.integers(0, 7))):  # siblings must stay distinct
            p, t = data.draw(st.integers(0, len(tokens) - 1)), data.draw(st.integers(0, vocab - 1))
            if not any(q == p and u == t for q, u in zip(parents, tokens)):
                tokens.append(t)
                parents.append(p)
        n = len(tokens)
        topk = np.array(
            data.draw(st.lists(st.lists(st.integers(-1, vocab + 1), min_size=k, max_size=k), min_size=n, max_size=n)),
            np.int32,
        )
        root_prev = data.draw(st.integers(-1, vocab - 1))
        pairs.update_from_feedback(Feedback.one(0, DraftTree(tokens, parents), [0], TopK.of(topk)), [root_prev])
        for i, t in enumerate(tokens):  # the same in dictionary form
            prev = root_prev if i == 0 else tokens[parents[i]]
            if prev >= 0:
                ref[(prev, t)] = [int(x) if 0 <= x < vocab else -1 for x in topk[i]]
    for key in owned_slots(pairs, list(ref)):
        np.testing.assert_array_equal(pairs.row(*key), ref[key])
    for prev in range(vocab):  # pairs never written have no row
        for t in range(vocab):
            if (prev, t) not in ref:
                assert pairs.row(prev, t) is None


def test_pair_seed_is_the_prefill_chain():
    pairs = PairAdjacency(50, 3, 1024)
    ctx = [5, 6, 7, 6]
    topk = np.array([[6, 1, 2], [7, 3, 4], [6, 8, 9], [0, 0, 0]])[:3]
    pairs.seed(ctx, TopK.of(topk))
    assert pairs.row(5, 6).tolist() == [7, 3, 4]  # after "5 6" came 7
    assert pairs.row(6, 7).tolist() == [6, 8, 9]
    assert pairs.row(-1, 5) is None and pairs.row(7, 6) is None  # last token: no top-k yet
    assert pairs.nbytes() == 1024 * (3 * 4 + 8)
