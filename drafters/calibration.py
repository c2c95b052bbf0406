"""Calibration of draft-node scores: from raw candidate probabilities to acceptance estimates.

Two levels, both learned from ``observe`` (see docs/dynamic_trees.md):

* **Edge calibration** (global, per drafter): a candidate in a recycled top-k row carries
  the rank r it had and the probability p the target gave it when the row was written
  (``target_topk`` with probabilities), or no probability (engines that send ids only).
  Its value as a tree edge is P(it is the target's next token | its parent was reached),
  estimated per cell (rank r, bin of p): every time a known row is overwritten, each of its
  entries is scored against the target's new top-1 there (a hit or not). The table
  ``cal[r, bin]`` is the cell's hit rate shrunk towards a prior (the bin's mid-point for
  known p, the rank prior for unknown p) by ``pseudo_count`` trials, made non-decreasing
  in p and non-increasing in r, and kept in (0, 1].
* **Length calibration** (per request and global): the expected accepted length of a tree
  is the sum of its non-root node scores (a node's score is its path value, the estimated
  probability that it is reached and accepted); observe compares it with the realised
  accepted length. :class:`LengthCalibration` keeps both sums, decayed, per request and
  globally, and gives the ratio realised / expected (a multiplier on node scores) that
  the budget policy uses; its bins (expected length -> realised) are the calibration table.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .sampling import REGIME_NAMES

__all__ = [
    "NBINS",
    "BIN_BITS",
    "pack_cell",
    "unpack_cell",
    "prob_bin",
    "edge_value",
    "EdgeCalibration",
    "LengthCalibration",
    "RegimeLengthCalibration",
    "expected_lengths",
]


def expected_lengths(trees) -> np.ndarray:
    """Per tree, the expected accepted draft tokens: the sum of its non-root node scores."""
    if not len(trees):
        return np.zeros(0, np.float64)
    sizes = np.fromiter((len(t) for t in trees), np.int64, len(trees))
    scores = np.concatenate([t.scores for t in trees]).astype(np.float64)
    starts = np.zeros(len(trees), np.int64)
    np.cumsum(sizes[:-1], out=starts[1:])
    return np.add.reduceat(scores, starts) - scores[starts]


#: probability bins of the edge calibration ([0, 0.1), [0.1, 0.2), ... [0.9, 1]); column
#: NBINS holds entries whose probability is unknown
NBINS = 10

#: a calibration cell (table row, probability bin) travels as one int, ``row << BIN_BITS | bin``
#: (``DraftTree.node_data`` of dynamic RACER trees, see :func:`score_tree_edges`)
BIN_BITS = 4
BIN_MASK = (1 << BIN_BITS) - 1
assert NBINS + 1 <= 1 << BIN_BITS, "the probability bins (NBINS + the unknown one) must fit in BIN_BITS"


@njit(cache=True, inline="always")
def pack_cell(row, column):
    """The cell (row, probability bin ``column``) of a calibration table as one int."""
    return (row << BIN_BITS) | column


@njit(cache=True, inline="always")
def unpack_cell(cell):
    """(row, probability bin) of a packed cell (see :func:`pack_cell`)."""
    return cell >> BIN_BITS, cell & BIN_MASK


@njit(cache=True, inline="always")
def prob_bin(p):
    if p < 0.0:
        return NBINS
    b = int(p * NBINS)
    return b if b < NBINS else NBINS - 1


@njit(cache=True, inline="always")
def edge_value(cal, r, p):
    """Calibrated P(accepted | parent accepted) of a rank-r candidate with raw probability p."""
    return cal[r, prob_bin(p)]


@njit(cache=True)
def score_row(cal_hits, cal_trials, old_toks, old_probs, best):
    """Score one known row (ids, probs) against the target's new top-1 ``best``."""
    for r in range(old_toks.shape[0]):
        t = old_toks[r]
        if t < 0:
            break
        b = prob_bin(old_probs[r])
        cal_trials[r, b] += 1.0
        if t == best:
            cal_hits[r, b] += 1.0


@njit(cache=True)
def score_tree_edges(tokens, parents, cells, node_offsets, accepted, accepted_offsets, regimes, hits, trials):
    """Acceptance evidence for binned edges: node i of tree b (flat index node_offsets[b] + i)
    whose parent was accepted (or is the root) and whose packed ``cells`` entry is >= 0 is a
    trial of that cell (:func:`unpack_cell`) of the table of its request's sampling regime
    (``hits[regimes[b]]``), a hit when it was accepted itself (its token is the committed
    token at its depth; ``accepted[accepted_offsets[b]: accepted_offsets[b + 1]]`` are the
    committed tokens, the bonus token last)."""
    for b in range(node_offsets.shape[0] - 1):
        g = regimes[b]
        base = node_offsets[b]
        n = node_offsets[b + 1] - base
        n_accepted = accepted_offsets[b + 1] - accepted_offsets[b] - 1
        on_path = np.zeros(n, np.bool_)
        depth = np.zeros(n, np.int64)
        on_path[0] = True
        for i in range(1, n):
            p = parents[base + i]
            d = depth[p] + 1
            depth[i] = d
            if not on_path[p]:
                continue
            hit = d <= n_accepted and tokens[base + i] == accepted[accepted_offsets[b] + d - 1]
            on_path[i] = hit
            cell = cells[base + i]
            if cell >= 0:
                row, column = unpack_cell(cell)
                trials[g, row, column] += 1.0
                if hit:
                    hits[g, row, column] += 1.0


class EdgeCalibration:
    """Per-(rank, probability bin) hit counts of recycled candidates, and the table from them."""

    def __init__(self, k: int, rank_prior, pseudo_count: float = 20.0):
        self.k = int(k)
        self.hits = np.zeros((self.k, NBINS + 1), np.float64)
        self.trials = np.zeros((self.k, NBINS + 1), np.float64)
        self.pseudo_count = float(pseudo_count)
        prior = np.empty((self.k, NBINS + 1), np.float64)
        prior[:, :NBINS] = (np.arange(NBINS) + 0.5) / NBINS
        rp = np.asarray(rank_prior, np.float64)
        prior[:, NBINS] = rp[: self.k] if rp.shape[0] >= self.k else np.pad(rp, (0, self.k - rp.shape[0]), "edge")
        self.prior = prior
        self._cache: np.ndarray | None = None
        self._cache_trials = -1.0

    def table(self) -> np.ndarray:
        """cal[k, NBINS + 1]; recomputed only when new evidence arrived."""
        total = float(self.trials.sum())
        if self._cache is not None and total == self._cache_trials:
            return self._cache
        c = self.pseudo_count
        cal = (self.hits + c * self.prior) / (self.trials + c)
        known = np.maximum.accumulate(cal[:, :NBINS], axis=1)  # non-decreasing in p
        cal[:, :NBINS] = known
        cal = np.minimum.accumulate(cal, axis=0)  # non-increasing in rank
        self._cache = np.ascontiguousarray(np.clip(cal, 1e-6, 1.0))
        self._cache_trials = total
        return self._cache

    def decay(self, limit: float = 1e7) -> None:
        if self.trials.sum() > limit:  # keep adapting
            self.hits *= 0.5
            self.trials *= 0.5

    def report(self) -> list[dict]:
        """Rows of the calibration table: rank, bin, raw mean estimate, trials, hit rate, table value."""
        cal = self.table()
        rows = []
        for r in range(self.k):
            for b in range(NBINS + 1):
                n = float(self.trials[r, b])
                if n == 0:
                    continue
                rows.append(
                    {
                        "rank": r,
                        "prob_bin": "unknown" if b == NBINS else f"[{b / NBINS:.1f},{(b + 1) / NBINS:.1f})",
                        "trials": int(n),
                        "hit_rate": float(self.hits[r, b] / n),
                        "estimate": float(cal[r, b]),
                    }
                )
        return rows


class AcceptanceCalibration:
    """Edge values learned from acceptance itself: cells (source row, probability bin) with
    hits/trials counted by :func:`score_tree_edges` over drafted nodes whose parent was
    accepted, shrunk towards a prior table (e.g. the row-overwrite estimates of
    :class:`EdgeCalibration`) by ``pseudo_count`` trials; rows kept non-decreasing in p.

    One table per sampling regime (:data:`.sampling.REGIME_NAMES`: greedy, then temperature
    bins): what the engine accepts depends on how it samples, so greedy values never see
    sampled evidence and each temperature bin learns its own."""

    def __init__(self, rows: int, pseudo_count: float = 10.0, regimes: int = len(REGIME_NAMES)):
        self.hits = np.zeros((regimes, rows, NBINS + 1), np.float64)
        self.trials = np.zeros((regimes, rows, NBINS + 1), np.float64)
        self.pseudo_count = float(pseudo_count)

    def table(self, prior: np.ndarray, regime: int = 0) -> np.ndarray:
        c = self.pseudo_count
        cal = (self.hits[regime] + c * prior) / (self.trials[regime] + c)
        cal[:, :NBINS] = np.maximum.accumulate(cal[:, :NBINS], axis=1)
        return np.ascontiguousarray(np.clip(cal, 1e-6, 1.0))

    def decay(self, limit: float = 1e6) -> None:
        for g in range(self.trials.shape[0]):
            if self.trials[g].sum() > limit:
                self.hits[g] *= 0.5
                self.trials[g] *= 0.5

    def report(self, prior_of, names) -> list[dict]:
        """Rows with evidence: source, regime, bin, trials, accept rate, prior, estimate;
        ``prior_of(regime)`` gives a regime's prior table."""
        rows = []
        for g in range(self.trials.shape[0]):
            if not self.trials[g].any():
                continue
            rows.extend(self._report(g, prior_of(g), names))
        return rows

    def _report(self, g: int, prior: np.ndarray, names) -> list[dict]:
        cal = self.table(prior, g)
        rows = []
        for r in range(cal.shape[0]):
            for b in range(NBINS + 1):
                n = float(self.trials[g, r, b])
                if n == 0:
                    continue
                rows.append(
                    {
                        "source": names[r],
                        "regime": REGIME_NAMES[g],
                        "prob_bin": "unknown" if b == NBINS else f"[{b / NBINS:.1f},{(b + 1) / NBINS:.1f})",
                        "trials": int(n),
                        "accept_rate": float(self.hits[g, r, b] / n),
                        "prior": float(prior[r, b]),
                        "estimate": float(cal[r, b]),
                    }
                )
        return rows


class LengthCalibration:
    """Expected vs realised accepted length, per request (decayed) and global (decayed)."""

    #: bins of the per-step expected accepted length (draft tokens, bonus excluded)
    EDGES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 1e9)

    def __init__(self, decay: float = 0.9, pseudo: float = 2.0, idle_decay: float = 0.97):
        self.decay = float(decay)
        # per step verified at the root alone: evidence halves in ~23 such steps
        self.idle_decay = float(idle_decay)
        self.pseudo = float(pseudo)
        self.req: dict = {}  # rid -> [expected, realised] (decayed sums)
        self.glob = np.zeros(2, np.float64)  # decayed sums over all requests
        nb = len(self.EDGES) - 1
        self.bin_steps = np.zeros(nb, np.float64)
        self.bin_expected = np.zeros(nb, np.float64)
        self.bin_realised = np.zeros(nb, np.float64)
        self.total = np.zeros(3, np.float64)  # steps, expected, realised (not decayed)

    def update(self, rids, expected, realised) -> None:
        e = np.asarray(expected, np.float64)
        a = np.asarray(realised, np.float64)
        # a step verified at its root alone (the policy's budget 1) says nothing about the
        # drafts: counting it would decay a request's evidence towards the prior, so after a
        # run of such steps the next drafts would be priced at the global ratio again
        drafted = e > 0
        if not drafted.all():
            idle = self.idle_decay
            for r, k in zip(rids, drafted.tolist()):
                st = None if k else self.req.get(r)
                if st is not None:  # ... but old evidence still fades, slowly, towards the prior
                    st[0] *= idle
                    st[1] *= idle
            rids = [r for r, k in zip(rids, drafted.tolist()) if k]
            e, a = e[drafted], a[drafted]
        if e.shape[0] == 0:
            return
        d = self.decay
        for rid, x, y in zip(rids, e.tolist(), a.tolist()):
            s = self.req.get(rid)
            if s is None:
                self.req[rid] = [x, y]
            else:
                s[0] = d * s[0] + x
                s[1] = d * s[1] + y
        g = 0.999 ** e.shape[0]
        self.glob[0] = g * self.glob[0] + e.sum()
        self.glob[1] = g * self.glob[1] + a.sum()
        b = np.clip(np.searchsorted(self.EDGES, e, side="right") - 1, 0, len(self.EDGES) - 2)
        np.add.at(self.bin_steps, b, 1.0)
        np.add.at(self.bin_expected, b, e)
        np.add.at(self.bin_realised, b, a)
        self.total += (e.shape[0], e.sum(), a.sum())

    def global_ratio(self) -> float:
        return float((self.glob[1] + self.pseudo) / (self.glob[0] + self.pseudo))

    def ratio(self, rid) -> float:
        """realised / expected for one request, shrunk towards the global ratio."""
        g = self.global_ratio()
        s = self.req.get(rid)
        if s is None:
            return g
        return float((s[1] + self.pseudo * g) / (s[0] + self.pseudo))

    def forget(self, rid) -> None:
        self.req.pop(rid, None)

    def report(self) -> dict:
        rows = []
        for i in range(len(self.EDGES) - 1):
            n = self.bin_steps[i]
            if n == 0:
                continue
            hi = self.EDGES[i + 1]
            rows.append(
                {
                    "expected_bin": f"[{self.EDGES[i]:g},{'inf' if hi > 1e8 else f'{hi:g}'})",
                    "steps": int(n),
                    "mean_expected": float(self.bin_expected[i] / n),
                    "mean_realised": float(self.bin_realised[i] / n),
                }
            )
        steps, e, a = self.total.tolist()
        return {
            "steps": int(steps),
            "mean_expected": e / steps if steps else 0.0,
            "mean_realised": a / steps if steps else 0.0,
            "global_ratio": self.global_ratio(),
            "bins": rows,
        }


class RegimeLengthCalibration:
    """:class:`LengthCalibration` kept per sampling regime (see :class:`AcceptanceCalibration`):
    a request's ratio comes from, and its steps go to, the regime ``set_regime`` gave it
    (greedy until then). Same interface as one :class:`LengthCalibration`."""

    def __init__(self) -> None:
        self.by_regime = [LengthCalibration() for _ in REGIME_NAMES]
        self._regime: dict = {}  # rid -> regime, sampled requests only

    @property
    def req(self) -> dict:
        """Per-request state of every regime (empty once every request was forgotten)."""
        out = {rid: None for rid in self._regime}
        for c in self.by_regime:
            out.update(c.req)
        return out

    def set_regime(self, rid, regime: int) -> None:
        old = self._regime.get(rid, 0)
        if old != regime:
            self.by_regime[old].forget(rid)
        if regime:
            self._regime[rid] = regime
        else:
            self._regime.pop(rid, None)

    def update(self, rids, expected, realised) -> None:
        if not self._regime:  # all greedy
            self.by_regime[0].update(rids, expected, realised)
            return
        groups = np.fromiter((self._regime.get(r, 0) for r in rids), np.int64, len(rids))
        e, a = np.asarray(expected, np.float64), np.asarray(realised, np.float64)
        for g in np.unique(groups).tolist():
            rows = np.flatnonzero(groups == g)
            self.by_regime[g].update([rids[i] for i in rows], e[rows], a[rows])

    def ratio(self, rid) -> float:
        return self.by_regime[self._regime.get(rid, 0)].ratio(rid)

    def forget(self, rid) -> None:
        self.by_regime[self._regime.pop(rid, 0)].forget(rid)

    def report(self) -> dict:
        """The report of the regime with the most steps, with every regime's under ``regimes``."""
        reports = {REGIME_NAMES[g]: c.report() for g, c in enumerate(self.by_regime) if c.total[0] > 0}
        main = max(self.by_regime, key=lambda c: c.total[0]).report()
        return {**main, "regimes": reports}
