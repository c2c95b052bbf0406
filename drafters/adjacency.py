"""Logit adjacency table: for every token, the target's latest top-k next tokens.

``rows[t]`` holds the top-k ids (best first) the target predicted after the last position
where token t was verified; -1 marks an empty entry (token never seen). Updates overwrite
the whole row (the most recent context wins), as in Token Recycling.

The table is indexed by token, not by request, so ONE table is shared by all requests of
a drafter: what one request's verification taught about "what follows token t" drafts for
every other request (that is the point of recycling). Size: vocab x k int32, e.g.
49152 x 8 x 4 B = 1.5 MiB, fixed for the drafter's lifetime; requests add no memory.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import cast

import numpy as np
from numba import njit

from .calibration import EdgeCalibration, score_row
from .errors import ConfigError
from .feedback import Feedback, TopK

__all__ = ["AdjacencyTable", "PairAdjacency", "update_rows", "flat_topk", "DEFAULT_RANK_PRIOR"]

#: P(rank-r adjacency candidate is the target's next token | its parent was): the prior of
#: recycled candidates (RACER's logits tree, Token Recycling's template, the tables' edge
#: calibration); a rough fit of top-k acceptance of recycled logits, decaying with rank.
DEFAULT_RANK_PRIOR = (0.5, 0.15, 0.08, 0.05, 0.04, 0.03, 0.025, 0.02)


@njit(cache=True, inline="always")
def _write_row(rows, probs, store_p, slot, topk, tprobs, i, kk, vocab):
    """rows[slot] := the target's top-k at feedback node i (ids out of range -> -1; ranks
    beyond kk cleared); with ``store_p`` their probabilities too (-1 = unknown)."""
    for r in range(kk):
        v = topk[i, r]
        rows[slot, r] = v if 0 <= v < vocab else -1
        if store_p:
            probs[slot, r] = tprobs[i, r]
    for r in range(kk, rows.shape[1]):
        rows[slot, r] = -1
        if store_p:
            probs[slot, r] = -1.0


@njit(cache=True)
def update_rows(rows, probs, tokens, topk, tprobs):
    """rows[tokens[i]] = topk[i, :k] for i < len(topk), in order (last write wins); probs
    gets tprobs[i] alike (-1: unknown; tprobs may have 0 rows: none known).

    Tokens outside the vocabulary are skipped; top-k ids outside it become -1; a row
    narrower than k is padded with -1.
    """
    vocab, k = rows.shape
    kk = min(k, topk.shape[1])
    known = tprobs.shape[0] == topk.shape[0]
    store_p = probs.shape[0] == vocab
    for i in range(topk.shape[0]):
        t = tokens[i]
        if t < 0 or t >= vocab:
            continue
        for r in range(kk):
            v = topk[i, r]
            rows[t, r] = v if 0 <= v < vocab else -1
            if store_p:
                probs[t, r] = tprobs[i, r] if known else -1.0
        for r in range(kk, k):
            rows[t, r] = -1
            if store_p:
                probs[t, r] = -1.0


@njit(cache=True, nogil=True)
def update_rows_flat(
    rows, probs, tokens, topk, tprobs, offsets, has_topk, hits, trials, cal_hits, cal_trials, part=0, parts=1
):
    """Batched update: request b's nodes are tokens[offsets[b]:offsets[b+1]] with top-k
    rows topk[offsets[b]:offsets[b+1]] (skipped where has_topk[b] is 0). Only the rows this
    ``part`` of ``parts`` owns (token % parts == part) are touched, in the serial order:
    parts run concurrently and each row sees the writes it would see serially.

    Before a known row is overwritten, it is scored against the target's choice there:
    hits[r] += 1 when its rank-r entry is the target's top-1, trials[0] += 1. Those are the
    empirical acceptance rates of rank-r recycled candidates (see ``rank_hit_rates``); per
    (rank, probability bin) they feed the edge calibration (``cal_hits``, ``cal_trials``).
    ``tprobs`` [N, k] holds the target's probabilities of the ids (-1: unknown).
    """
    vocab, k = rows.shape
    kk = min(k, topk.shape[1])
    store_p = probs.shape[0] == vocab  # else probs is a [1, k] row of -1 (not stored)
    for b in range(offsets.shape[0] - 1):
        if not has_topk[b]:
            continue
        for i in range(offsets[b], offsets[b + 1]):
            t = tokens[i]
            if t < 0 or t >= vocab or t % parts != part:
                continue
            best = topk[i, 0]
            if rows[t, 0] >= 0 and best >= 0:
                trials[0] += 1.0
                for r in range(k):
                    if rows[t, r] == best:
                        hits[r] += 1.0
                        break
                score_row(cal_hits, cal_trials, rows[t], probs[t] if store_p else probs[0], best)
            _write_row(rows, probs, store_p, t, topk, tprobs, i, kk, vocab)


def flat_topk(feedback: Feedback):
    """(ids [N, k] int32, probs [N, k] float32 with -1 where unknown) of a step's verified
    nodes, or None when the engine sent no top-k for any request."""
    tk = feedback.topk
    if tk is None or feedback.has_topk is None or not feedback.has_topk.any():
        return None
    return tk.ids, tk.probs_or_unknown()


def id_and_prob_rows(n: int, k: int, probs: bool):
    """(ids [n, k] int32 filled with -1, probs float32 filled with -1.0).

    With ``probs``, both are views of one 64-byte-aligned [n, 2k] buffer, so a row's ids
    and its probabilities share cache lines (dynamic trees read both for every candidate:
    token-recycling[dynamic] propose went from 12.4 to 11.6 us p50 at batch 256, RACER's
    was unchanged). Without, probs is a [1, k] placeholder (nothing stored)."""
    if not probs:
        return np.full((n, k), -1, np.int32), np.full((1, k), -1.0, np.float32)
    raw = np.empty(n * 2 * k + 16, np.int32)
    off = (-raw.ctypes.data % 64) // 4
    buf = raw[off : off + n * 2 * k].reshape(n, 2 * k)
    ids, pr = buf[:, :k], buf[:, k:].view(np.float32)
    ids[...] = -1
    pr[...] = -1.0
    return ids, pr


class AdjacencyTable:
    """The shared [vocab, k] int32 table and its updates."""

    def __init__(self, vocab_size: int, k: int = 8, probs: bool = False):
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= 64:
            raise ConfigError(f"adjacency top-k width must be an integer in [1, 64], got {k!r}")
        self.k = int(k)
        # the target's probability of each id (-1: unknown); stored only for dynamic trees
        self.rows, self.probs = id_and_prob_rows(int(vocab_size), self.k, probs)
        self.hits = np.zeros(self.k, np.float64)  # rank-r entry was the target's top-1
        self.trials = np.zeros(1, np.float64)  # known rows checked against the target
        self.calibration = EdgeCalibration(self.k, DEFAULT_RANK_PRIOR)

    @property
    def vocab_size(self) -> int:
        return int(self.rows.shape[0])

    def nbytes(self) -> int:
        return int(self.rows.nbytes + (self.probs.nbytes if self.probs.shape[0] > 1 else 0))

    def update(self, tokens, topk: TopK) -> None:
        """Row of tokens[i] := topk row i (the target's top-k after the position of tokens[i])."""
        toks = np.ascontiguousarray(tokens, dtype=np.int32)
        if len(topk) != toks.shape[0]:
            raise ConfigError(f"top-k ids must have shape [{toks.shape[0]}, k], got {topk.ids.shape}")
        if toks.shape[0]:
            update_rows(self.rows, self.probs, toks, topk.ids, _probs_arg(topk.probs))

    def seed(self, context_ids, context_topk: TopK) -> None:
        """From prefill: context_topk row i followed context_ids[i] (for all but the last token)."""
        ctx = np.ascontiguousarray(context_ids, dtype=np.int32)
        n = ctx.shape[0] - 1
        if len(context_topk) != n:
            raise ConfigError(
                f"context_topk must have shape [len(context_ids) - 1, k] = [{n}, k], got {context_topk.ids.shape}"
            )
        if n > 0:
            update_rows(self.rows, self.probs, ctx, context_topk.ids, _probs_arg(context_topk.probs))

    def update_from_feedback(self, feedback: Feedback) -> None:
        """Batched observe: every node of every verified tree gets the target's top-k there."""
        run_serially(*self.feedback_tasks(feedback))

    def feedback_tasks(self, feedback: Feedback, parts: int = 1):
        """:meth:`update_from_feedback` as ``parts`` tasks over disjoint rows, which may run
        concurrently (with anything that does not touch this table), and the merge that
        must run after all of them; ([], None) when the step has no top-k."""
        flat = flat_topk(feedback)
        if flat is None:
            return [], None
        topk, probs = flat
        args = (self.rows, self.probs, feedback.tokens, topk, probs, feedback.node_offsets, feedback.has_topk)
        cal = self.calibration
        shared = (self.hits, self.trials, cal.hits, cal.trials)
        counters = [shared] if parts <= 1 else [tuple(np.zeros_like(c) for c in shared) for _ in range(parts)]
        kernel = cast(Callable[..., None], update_rows_flat)
        tasks = [partial(kernel, *args, *c, j, max(1, parts)) for j, c in enumerate(counters)]

        def merge() -> None:
            if parts > 1:  # per-part counts (integers) in part order: the serial sums, exactly
                for c in counters:
                    for total, part in zip(shared, c):
                        total += part
            if self.trials[0] > 1e7:  # keep adapting: old evidence fades
                self.hits *= 0.5
                self.trials *= 0.5
            cal.decay()

        return tasks, merge

    def rank_hit_rates(self, prior, pseudo_count: float) -> np.ndarray:
        """P(rank-r candidate is the target's next token | its parent was): the observed hit
        rates, shrunk towards ``prior`` by ``pseudo_count`` trials, made non-increasing in
        rank (best-first expansion relies on it) and kept in (0, 1]."""
        prior = np.asarray(prior, np.float64)
        rates = (self.hits + pseudo_count * prior) / (self.trials[0] + pseudo_count)
        return np.clip(np.minimum.accumulate(rates), 1e-6, 1.0)

    def row(self, token: int) -> np.ndarray:
        return self.rows[int(token)]


def run_serially(tasks, merge) -> None:
    """Run :meth:`AdjacencyTable.feedback_tasks`' tasks, then their merge, on this thread."""
    for task in tasks:
        task()
    if merge is not None:
        merge()


def _probs_arg(pr):
    """Probabilities for the kernels: [n, k] float32, or a [0, 0] array meaning unknown."""
    if pr is None:
        return np.empty((0, 0), np.float32)
    return np.ascontiguousarray(pr, dtype=np.float32)


# --------------------------------------------------------------------------- pair-keyed rows
@njit(cache=True, inline="always")
def _pair_slot(prev, tok, vocab, mask):
    key = np.int64(prev) * vocab + tok
    h = np.uint64(key) * np.uint64(0x9E3779B97F4A7C15)
    return key, np.int64((h >> np.uint64(29)) & np.uint64(mask))


@njit(cache=True)
def pair_row(keys, prev, tok, vocab):
    """Slot holding the row of the token pair (prev, tok), or -1."""
    if prev < 0 or tok < 0 or prev >= vocab or tok >= vocab:
        return -1
    key, s = _pair_slot(prev, tok, vocab, keys.shape[0] - 1)
    return s if keys[s] == key else -1


@njit(cache=True, nogil=True)
def update_pairs_flat(
    keys,
    rows,
    probs,
    tokens,
    parents,
    root_prev,
    topk,
    tprobs,
    offsets,
    has_topk,
    vocab,
    cal_hits,
    cal_trials,
    part=0,
    parts=1,
):
    """Row of the pair (token before node i, token of node i) := topk[i] (probs := tprobs[i]).
    The token before a tree's root is root_prev[b] (-1: unknown, skipped); before any other
    node, its parent's. A row of the same pair being overwritten is first scored against the
    target's new top-1 (edge calibration of pair rows). Only slots this ``part`` of ``parts``
    owns (slot % parts == part) are touched, in the serial order (see update_rows_flat)."""
    k = rows.shape[1]
    kk = min(k, topk.shape[1])
    mask = keys.shape[0] - 1
    store_p = probs.shape[0] == rows.shape[0]  # else probs is a [1, k] row of -1 (not stored)
    for b in range(offsets.shape[0] - 1):
        if not has_topk[b]:
            continue
        base = offsets[b]
        for i in range(base, offsets[b + 1]):
            prev = root_prev[b] if i == base else tokens[base + parents[i]]
            t = tokens[i]
            if prev < 0 or t < 0 or prev >= vocab or t >= vocab:
                continue
            key, s = _pair_slot(prev, t, vocab, mask)
            if s % parts != part:
                continue
            if keys[s] == key and topk[i, 0] >= 0:
                score_row(cal_hits, cal_trials, rows[s], probs[s] if store_p else probs[0], topk[i, 0])
            keys[s] = key
            _write_row(rows, probs, store_p, s, topk, tprobs, i, kk, vocab)


class PairAdjacency:
    """Top-k rows keyed by the last two tokens, a direct-mapped cache of ``n_rows`` rows
    (rounded up to a power of two; a colliding pair replaces the older row).

    A refinement of the token-keyed table: what the target predicted after the pair (a, b)
    is a sharper guess than what it last predicted after any b. Drafting prefers the pair
    row and falls back to the token row. Shared by all requests like the token table;
    fixed size: n_rows x (k x 4 + 8) bytes.
    """

    def __init__(self, vocab_size: int, k: int, n_rows: int, probs: bool = False):
        size = 1 << max(4, int(n_rows - 1).bit_length())
        self.vocab_size, self.k = int(vocab_size), int(k)
        self.keys = np.full(size, -1, np.int64)
        self.rows, self.probs = id_and_prob_rows(size, self.k, probs)
        self.calibration = EdgeCalibration(self.k, DEFAULT_RANK_PRIOR)

    def nbytes(self) -> int:
        return int(self.keys.nbytes + self.rows.nbytes + (self.probs.nbytes if self.probs.shape[0] > 1 else 0))

    def update_from_feedback(self, feedback: Feedback, root_prev) -> None:
        run_serially(*self.feedback_tasks(feedback, root_prev))

    def feedback_tasks(self, feedback: Feedback, root_prev, parts: int = 1):
        """The update as ``parts`` tasks over disjoint slots (slot % parts) and the merge after
        them (see :meth:`AdjacencyTable.feedback_tasks`); ([], None) without top-k."""
        flat = flat_topk(feedback)
        if flat is None:
            return [], None
        topk, probs = flat
        args = (
            self.keys,
            self.rows,
            self.probs,
            feedback.tokens,
            feedback.parents,
            np.asarray(root_prev, np.int64),
            topk,
            probs,
            feedback.node_offsets,
            feedback.has_topk,
            self.vocab_size,
        )
        cal = self.calibration
        shared = (cal.hits, cal.trials)
        counters = [shared] if parts <= 1 else [tuple(np.zeros_like(c) for c in shared) for _ in range(parts)]
        kernel = cast(Callable[..., None], update_pairs_flat)
        tasks = [partial(kernel, *args, *c, j, max(1, parts)) for j, c in enumerate(counters)]

        def merge() -> None:
            if parts > 1:
                for c in counters:
                    for total, part in zip(shared, c):
                        total += part
            cal.decay()

        return tasks, merge

    def seed(self, context_ids, context_topk: TopK) -> None:
        """Prefill: the pair (context[i-1], context[i]) was followed by context_topk row i."""
        ctx = np.ascontiguousarray(context_ids, dtype=np.int32)
        tk = context_topk.ids
        n = ctx.shape[0] - 1  # positions with top-k
        if n < 2:
            return
        pr = context_topk.probs_or_unknown()
        tokens = ctx[:n]
        parents = np.arange(-1, n - 1, dtype=np.int32)  # a chain: node i's parent is i - 1
        offsets = np.array([0, n], np.int64)
        update_pairs_flat(
            self.keys,
            self.rows,
            self.probs,
            tokens,
            parents,
            np.array([-1], np.int64),
            tk[:n],
            pr[:n],
            offsets,
            np.ones(1, np.bool_),
            self.vocab_size,
            self.calibration.hits,
            self.calibration.trials,
        )

    def row(self, prev: int, token: int):
        s = pair_row(self.keys, int(prev), int(token), self.vocab_size)
        return None if s < 0 else self.rows[s]
