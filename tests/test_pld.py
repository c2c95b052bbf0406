"""Prompt lookup decoding: the n-gram matcher against brute force, and the drafter's
lifecycle under the Drafter protocol."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specplug.drafters import registry
from specplug.drafters.errors import ConfigError
from specplug.drafters.feedback import Feedback
from specplug.drafters.pld import PromptLookupDrafter, find_continuation


def brute_force(ctx, max_ngram, min_ngram, max_draft):
    """Longest tail n-gram (max_ngram down to min_ngram) with an earlier occurrence; the
    most recent such occurrence wins; return up to max_draft tokens that followed it."""
    ctx = list(ctx)
    n_ctx = len(ctx)
    for n in range(max_ngram, min_ngram - 1, -1):
        if n > n_ctx - 1:
            continue
        tail = ctx[n_ctx - n :]
        for s in range(n_ctx - n - 1, -1, -1):  # occurrences ending before the last token
            if ctx[s : s + n] == tail:
                return ctx[s + n : s + n + max_draft]
    return []


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=1, max_size=30), st.integers(1, 5), st.integers(1, 5), st.integers(0, 8))
def test_find_continuation_matches_brute_force(ctx, max_ngram, min_ngram, max_draft):
    min_ngram = min(min_ngram, max_ngram)
    got = find_continuation(np.array(ctx, np.int32), max_ngram, min_ngram, max_draft)
    assert got.tolist() == brute_force(ctx, max_ngram, min_ngram, max_draft)
    assert len(got) <= max_draft


def test_find_continuation_examples():
    ctx = np.array([5, 1, 2, 9, 1, 2, 7, 3, 1, 2])
    # tail bigram (1, 2) last occurred at 4..5, followed by 7, 3, 1, 2
    assert find_continuation(ctx, 2, 1, 3).tolist() == [7, 3, 1]
    # trigram (3, 1, 2) has no earlier occurrence: fall back to the bigram
    assert find_continuation(ctx, 3, 2, 10).tolist() == [7, 3, 1, 2]
    assert find_continuation(ctx, 3, 3, 10).tolist() == []
    assert find_continuation(np.array([4]), 3, 1, 5).tolist() == []
    # overlapping self-match: a run of one token predicts more of it
    assert find_continuation(np.array([8, 8, 8]), 2, 1, 4).tolist() == [8]


def test_lifecycle():
    d = registry.create("pld", 32, {"max_ngram": 2, "max_draft": 3})
    assert isinstance(d, PromptLookupDrafter) and d.active_requests() == 0
    d.start("a", [1, 2, 3, 4, 1, 2])
    d.start("b", [7])
    assert d.active_requests() == 2
    ta, tb = d.propose(["a", "b"], [8, 8])
    ta.validate(vocab_size=32, budget=8)
    assert ta.tokens.tolist() == [2, 3, 4, 1] and ta.parents.tolist() == [-1, 0, 1, 2]
    assert len(tb) == 1 and tb.tokens.tolist() == [7]  # nothing to match yet
    # budget caps the draft: at most budget - 1 guesses; budget 1 is "no speculation"
    (t3,) = d.propose(["a"], [3])
    assert t3.tokens.tolist() == [2, 3, 4]
    (t1,) = d.propose(["a"], [1])
    assert len(t1) == 1 and t1.tokens.tolist() == [2]
    # observe appends the committed tokens; the last one is the next root
    d.observe("a", ta, [3, 9])
    assert d.context("a").tolist() == [1, 2, 3, 4, 1, 2, 3, 9]
    (ta2,) = d.propose(["a"], [8])
    assert ta2.tokens[0] == 9 and len(ta2) == 1  # 9 never seen before
    d.observe_batch(Feedback.from_lists(["a", "b"], [ta2, tb], [[2], [7]]))
    assert d.context("b").tolist() == [7, 7]
    (tb2,) = d.propose(["b"], [4])
    assert tb2.tokens.tolist() == [7, 7]
    d.finish("a")
    d.finish("a")  # finishing twice is harmless
    d.finish("b")
    assert d.active_requests() == 0


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.integers(0, 4), min_size=1, max_size=20),
    st.lists(st.lists(st.integers(0, 4), min_size=1, max_size=6), max_size=40),
    st.integers(1, 12),
)
def test_drafts_respect_budget_and_context_grows(prompt, steps, budget):
    d = PromptLookupDrafter(5, max_ngram=3, min_ngram=1, max_draft=6)
    d.start(0, prompt)
    ctx = list(prompt)
    for acc in steps:  # grows past the 64 buffer
        (t,) = d.propose([0], [budget])
        t.validate(vocab_size=5, budget=budget)
        assert len(t) - 1 <= min(budget - 1, 6)
        assert t.tokens[0] == ctx[-1]
        assert t.tokens[1:].tolist() == brute_force(ctx, 3, 1, min(budget - 1, 6))
        d.observe(0, t, acc)
        ctx += acc
        assert d.context(0).tolist() == ctx
    d.finish(0)
    assert d.active_requests() == 0


def test_bad_configuration():
    with pytest.raises(ConfigError, match="min_ngram"):
        PromptLookupDrafter(10, max_ngram=2, min_ngram=3)
    with pytest.raises(ConfigError, match="vocab_size"):
        PromptLookupDrafter(0)
    d = PromptLookupDrafter(10)
    with pytest.raises(ConfigError, match="non-empty"):
        d.start("x", [])
    assert d.active_requests() == 0
