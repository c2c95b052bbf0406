"""The retrieval automaton against brute force: strings, counts, failure links, eviction."""

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specplug.drafters.errors import ConfigError
from specplug.drafters.ngram_automaton import FAIL, FREQ, KEY, O_CLOCK, PARENT, NgramPool, active_tail, match_state


def substring_counts(seq, depth):
    """{string: occurrences} of every substring of length <= depth."""
    return Counter(tuple(seq[a:b]) for b in range(1, len(seq) + 1) for a in range(max(0, b - depth), b))


def feed_in_chunks(pool, slot, seq, rng):
    i = 0
    while i < len(seq):
        j = min(len(seq), i + int(rng.integers(1, 6)))
        pool.feed(slot, seq[i:j])
        i = j


def check_structure(pool, slot):
    """Closure invariants every owner keeps, with or without eviction."""
    strings = pool.all_strings(slot)
    for s, v in strings.items():
        assert s[:-1] == () or s[:-1] in strings, "parent missing"
        f = int(pool.nodes[v, FAIL])
        assert pool.string(f) == s[1:], f"failure link of {s} is {pool.string(f)}"
        assert pool.nodes[v, FREQ] >= 1
        # keys: a child is never younger than its parent, its failure target is strictly younger
        p = int(pool.nodes[v, PARENT])
        if p != pool.root(slot):
            assert pool.nodes[v, KEY] <= pool.nodes[p, KEY]
        if f != pool.root(slot):
            assert pool.nodes[f, KEY] > pool.nodes[v, KEY]
    return strings


@settings(max_examples=60, deadline=None)
@given(seq=st.lists(st.integers(0, 3), min_size=1, max_size=70), depth=st.integers(1, 6), seed=st.integers(0, 1000))
def test_matches_brute_force(seq, depth, seed):
    rng = np.random.default_rng(seed)
    pool = NgramPool(depth, initial_nodes=8)  # forces several pool growths
    slot = pool.new_owner(10**6)
    feed_in_chunks(pool, slot, seq, rng)
    counts = substring_counts(seq, depth)
    strings = check_structure(pool, slot)
    assert set(strings) == set(counts)  # every n-gram, nothing else
    for s, v in strings.items():
        assert pool.nodes[v, FREQ] == counts[s], s
    # children of a string = the tokens that followed it somewhere
    for s, v in strings.items():
        if len(s) < depth:
            follow = {seq[i + len(s)] for i in range(len(seq) - len(s)) if tuple(seq[i : i + len(s)]) == s}
            assert set(pool.children(v)) == follow
    # active state: the longest context suffix that can still grow
    tail = tuple(seq[max(0, len(seq) - depth + 1) :]) if depth > 1 else ()
    assert pool.string(pool.active(slot)) == tail
    out = np.empty(80, np.int32)
    n = active_tail(pool.nodes, pool.owners, slot, out)
    assert tuple(out[:n].tolist()) == tail
    assert pool.owner_nodes(slot) == len(strings) + 1
    pool.free_owner(slot)
    assert pool.live_nodes == 0


@settings(max_examples=40, deadline=None)
@given(
    text=st.lists(st.integers(0, 3), min_size=1, max_size=50),
    query=st.lists(st.integers(0, 4), min_size=0, max_size=12),
    depth=st.integers(1, 5),
)
def test_match_state_is_longest_suffix_in_trie(text, query, depth):
    pool = NgramPool(depth)
    slot = pool.new_owner(10**6)
    pool.feed(slot, text)
    strings = set(substring_counts(text, depth))
    q = np.asarray(query, np.int32)
    v = match_state(pool.nodes, pool.table, pool.root(slot), q, 0, q.shape[0])
    best = ()
    for a in range(len(query) + 1):
        s = tuple(query[a:])
        if s in strings:
            best = s
            break
    assert pool.string(int(v)) == best


def test_owners_are_independent_and_documents_do_not_join():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 5, 200).tolist()
    b = rng.integers(0, 5, 150).tolist()
    pool = NgramPool(4, initial_nodes=16)
    sa, sb = pool.new_owner(10**6), pool.new_owner(10**6)
    for i in range(0, 200, 7):  # interleave the two owners
        pool.feed(sa, a[i : i + 7])
        pool.feed(sb, b[i : i + 7])
    assert {s: pool.nodes[v, FREQ] for s, v in pool.all_strings(sa).items()} == substring_counts(a, 4)
    assert {s: pool.nodes[v, FREQ] for s, v in pool.all_strings(sb).items()} == substring_counts(b, 4)
    # two documents in one owner: n-grams never span the boundary
    sc = pool.new_owner(10**6)
    pool.feed(sc, [1, 2, 3])
    pool.new_document(sc)
    pool.feed(sc, [4, 5])
    assert pool.lookup(sc, [3, 4]) == -1 and pool.lookup(sc, [1, 2, 3]) >= 0 and pool.lookup(sc, [4, 5]) >= 0
    for s in (sa, sb, sc):
        pool.free_owner(s)
    assert pool.live_nodes == 0 and pool.active_owners() == 0


@pytest.mark.parametrize("depth", [2, 5, 10])
def test_eviction_respects_cap_and_keeps_recent_and_frequent_ngrams(depth):
    rng = np.random.default_rng(depth)
    cap = 64 * depth
    pool = NgramPool(depth, initial_nodes=64)
    slot = pool.new_owner(cap)
    motif = [1000, 1001, 1002, 1003, 1004, 1005, 1006, 1007, 1008, 1009, 1010][:depth]
    seq = []
    for _ in range(60):
        chunk = rng.integers(0, 300, 25).tolist() + motif  # noise churns, the motif recurs
        seq += chunk
        pool.feed(slot, chunk)
        assert pool.owner_nodes(slot) <= cap
    strings = check_structure(pool, slot)
    counts = substring_counts(seq, depth)
    assert set(strings) <= set(counts)
    for s, v in strings.items():
        assert pool.nodes[v, FREQ] <= counts[s]
    # the recent past is all there
    recent = seq[-2 * depth :]
    for s in substring_counts(recent, depth):
        assert s in strings, s
    # the recurring motif survives eviction, with its recent occurrences counted
    v = pool.lookup(slot, motif)
    assert v >= 0 and pool.nodes[v, FREQ] >= 2
    assert pool.string(pool.active(slot)) == tuple(seq[-(depth - 1) :]) if depth > 1 else True
    pool.free_owner(slot)
    assert pool.live_nodes == 0


def test_key_renormalisation_keeps_structure():
    pool = NgramPool(3)
    slot = pool.new_owner(64 * 3)
    pool.owners[slot, O_CLOCK] = (1 << 30) - 50  # near the renormalisation point
    rng = np.random.default_rng(0)
    for _ in range(40):
        pool.feed(slot, rng.integers(0, 50, 20))
    assert pool.owners[slot, O_CLOCK] < (1 << 30)
    check_structure(pool, slot)


def test_bad_depth_rejected():
    with pytest.raises(ConfigError, match=r"\[1, 64\]"):
        NgramPool(0)
    with pytest.raises(ConfigError):
        NgramPool(65)
