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

import numpy as np
from numba import njit

from .errors import ConfigError

__all__ = ["AdjacencyTable", "update_rows"]


@njit(cache=True)
def update_rows(rows, tokens, topk):
    """rows[tokens[i]] = topk[i, :k] for i < len(topk), in order (last write wins).

    Tokens outside the vocabulary are skipped; top-k ids outside it become -1; a row
    narrower than k is padded with -1.
    """
    vocab, k = rows.shape
    kk = min(k, topk.shape[1])
    for i in range(topk.shape[0]):
        t = tokens[i]
        if t < 0 or t >= vocab:
            continue
        for r in range(kk):
            v = topk[i, r]
            rows[t, r] = v if 0 <= v < vocab else -1
        for r in range(kk, k):
            rows[t, r] = -1


@njit(cache=True)
def update_rows_flat(rows, tokens, topk, offsets, has_topk, hits, trials):
    """Batched update: request b's nodes are tokens[offsets[b]:offsets[b+1]] with top-k
    rows topk[offsets[b]:offsets[b+1]] (skipped where has_topk[b] is 0).

    Before a known row is overwritten, it is scored against the target's choice there:
    hits[r] += 1 when its rank-r entry is the target's top-1, trials[0] += 1. Those are the
    empirical acceptance rates of rank-r recycled candidates (see ``rank_hit_rates``).
    """
    vocab, k = rows.shape
    kk = min(k, topk.shape[1])
    for b in range(offsets.shape[0] - 1):
        if not has_topk[b]:
            continue
        for i in range(offsets[b], offsets[b + 1]):
            t = tokens[i]
            if t < 0 or t >= vocab:
                continue
            best = topk[i, 0]
            if rows[t, 0] >= 0 and best >= 0:
                trials[0] += 1.0
                for r in range(k):
                    if rows[t, r] == best:
                        hits[r] += 1.0
                        break
            for r in range(kk):
                v = topk[i, r]
                rows[t, r] = v if 0 <= v < vocab else -1
            for r in range(kk, k):
                rows[t, r] = -1


class AdjacencyTable:
    """The shared [vocab, k] int32 table and its updates."""

    def __init__(self, vocab_size: int, k: int = 8):
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= 64:
            raise ConfigError(f"adjacency top-k width must be an integer in [1, 64], got {k!r}")
        self.k = int(k)
        self.rows = np.full((int(vocab_size), self.k), -1, np.int32)
        self.hits = np.zeros(self.k, np.float64)     # rank-r entry was the target's top-1
        self.trials = np.zeros(1, np.float64)        # known rows checked against the target

    @property
    def vocab_size(self) -> int:
        return int(self.rows.shape[0])

    def nbytes(self) -> int:
        return int(self.rows.nbytes)

    def update(self, tokens, topk) -> None:
        """Row of tokens[i] := topk[i] (the target's top-k after the position of tokens[i])."""
        toks = np.ascontiguousarray(tokens, dtype=np.int32)
        tk = np.asarray(topk)
        if tk.ndim != 2 or tk.shape[0] != toks.shape[0]:
            raise ConfigError(f"top-k ids must have shape [{toks.shape[0]}, k], got {tk.shape}")
        if toks.shape[0]:
            update_rows(self.rows, toks, np.ascontiguousarray(tk, dtype=np.int32))

    def seed(self, context_ids, context_topk) -> None:
        """From prefill: context_topk[i] followed context_ids[i] (for all but the last token)."""
        ctx = np.ascontiguousarray(context_ids, dtype=np.int32)
        tk = np.asarray(context_topk)
        n = ctx.shape[0] - 1
        if tk.ndim != 2 or tk.shape[0] != n:
            raise ConfigError(f"context_topk must have shape [len(context_ids) - 1, k] = [{n}, k], "
                              f"got {tk.shape}")
        if n > 0:
            update_rows(self.rows, ctx, np.ascontiguousarray(tk, dtype=np.int32))

    def update_from_trees(self, trees, target_topk) -> None:
        """Batched observe: every node of every verified tree gets the target's top-k there
        (``target_topk[b]`` is [len(trees[b]), k'] or None where the engine gave none)."""
        if target_topk is None:
            return
        has = np.fromiter((x is not None for x in target_topk), np.bool_, len(target_topk))
        if not has.any():
            return
        sizes = np.fromiter((len(t) for t in trees), np.int64, len(trees))
        offsets = np.zeros(len(trees) + 1, np.int64)
        np.cumsum(sizes, out=offsets[1:])
        rows = [np.asarray(x) if x is not None else None for x in target_topk]
        k = max(x.shape[1] for x in rows if x is not None and x.ndim == 2)
        for i, x in enumerate(rows):
            if x is None:
                rows[i] = np.full((int(sizes[i]), k), -1, np.int32)
            elif x.ndim != 2 or x.shape[0] != sizes[i]:
                raise ConfigError(f"target_topk must have shape [tree nodes = {int(sizes[i])}, k], got {x.shape}")
            elif x.shape[1] != k:
                rows[i] = np.pad(x, ((0, 0), (0, k - x.shape[1])), constant_values=-1)
        toks = np.concatenate([t.tokens for t in trees])
        topk = np.ascontiguousarray(np.concatenate(rows), dtype=np.int32)
        update_rows_flat(self.rows, toks, topk, offsets, has, self.hits, self.trials)
        if self.trials[0] > 1e7:                    # keep adapting: old evidence fades
            self.hits *= 0.5
            self.trials *= 0.5

    def rank_hit_rates(self, prior, pseudo_count: float) -> np.ndarray:
        """P(rank-r candidate is the target's next token | its parent was): the observed hit
        rates, shrunk towards ``prior`` by ``pseudo_count`` trials, made non-increasing in
        rank (best-first expansion relies on it) and kept in (0, 1]."""
        prior = np.asarray(prior, np.float64)
        rates = (self.hits + pseudo_count * prior) / (self.trials[0] + pseudo_count)
        return np.clip(np.minimum.accumulate(rates), 1e-6, 1.0)

    def row(self, token: int) -> np.ndarray:
        return self.rows[int(token)]
