"""Dynamic draft trees: greedy best-first expansion over a candidate graph (DySpec, EAGLE-2).

Input, a **candidate graph** in dense form: for every key K (a token for adjacency rows, an
automaton state, a lattice position...), up to k candidate rows sorted best first:

    ctok[K, r]   the candidate's token (-1: no more candidates in this row)
    cval[K, r]   its value as an edge: the estimated P(accepted | parent accepted), in (0, 1]
                 (raw probabilities, or calibrated ones: see ``cal`` below)
    ckey[K, r]   the key of the node it becomes (-1: a leaf, nothing below it)

A node's value is the product of the edge values on its path (its estimated probability of
being reached and accepted: the DraftTree score); the value of a tree is the sum of its
node values, i.e. its expected number of accepted draft tokens. :func:`grow_dynamic`
grows the tree greedily from a max-heap of (value, parent node, rank): pop the best, add
that child, push the child's first child and the parent's next sibling, until the budget
is spent. With edge values in (0, 1] and non-increasing along each row, the result is a
maximal-value ancestor-closed tree for the budget (the exchange argument of DySpec):
popped values never increase, and every node not taken is worth at most the last one
taken. Two pushes per node, so one tree costs O(n log n) for n nodes, all compiled.

Optional refinements used by the adjacency drafters:
* ``cal`` / ``use_cal``: ``cval`` holds raw target probabilities (or -1: unknown) and the
  edge value is ``cal[r, bin(p)]`` (:mod:`.calibration`), times ``alpha`` (a per-request
  multiplier), capped at 1; values are made non-increasing along each row on the fly.
* pair rows (keys are tokens): a node whose (parent token, token) pair has a row in the
  pair cache (:mod:`.adjacency`) takes its candidates from there instead.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .adjacency import pair_row
from .calibration import edge_value
from .tree_build import heap_pop, heap_push, tree_add, tree_find, tree_init

__all__ = ["grow_dynamic", "build_dynamic", "build_dynamic_batch"]


@njit(cache=True, inline="always")
def _cand(ctok, cval, ptok, pval, which, row, r):
    if which == 1:
        return ptok[row, r], pval[row, r]
    return ctok[row, r], cval[row, r]


@njit(cache=True, inline="always")
def _edge(raw, r, cal, use_cal, alpha):
    v = edge_value(cal, r, raw) * alpha if use_cal else raw
    return v if v < 1.0 else 1.0


@njit(cache=True)
def _select_row(ckey, pkeys, use_pairs, vocab, parent_tok, tok, key, nsrc, nrow):
    """The row node i drafts from: its pair row (source 1) when there is one, else key row."""
    if use_pairs:
        s = pair_row(pkeys, parent_tok, tok, vocab)
        if s >= 0:
            nsrc[0] = 1
            nrow[0] = s
            return
    nsrc[0] = 0
    nrow[0] = key


@njit(cache=True)
def grow_dynamic(ctok, cval, ckey, ptok, pval, pkeys, use_pairs, root_key, root_prev, cal, use_cal, alpha,
                 max_depth, budget, tok, par, sc, fc, ns, dep, val, src, row, hs, ha, hb):
    """Grow one tree (``tok[0]`` = root, already initialised by :func:`tree_init`) to at most
    ``budget`` nodes; returns its size. Scratch per node: ``val`` (float64 path value),
    ``src``/``row`` (which candidate row it drafts from; -1: none). Heap (hs, ha, hb) holds
    at most 2 * budget + 1 entries."""
    nkeys = ctok.shape[0]
    kk = ctok.shape[1]
    vocab = nkeys
    val[0] = 1.0
    size = 1
    n = 0
    one = np.empty(1, np.int64)
    two = np.empty(1, np.int64)
    if root_key < 0 or root_key >= nkeys or budget <= 1:
        return size
    _select_row(ckey, pkeys, use_pairs, vocab, root_prev, tok[0], root_key, one, two)
    src[0] = one[0]
    row[0] = two[0]
    t0, p0 = _cand(ctok, cval, ptok, pval, src[0], row[0], 0)
    if t0 >= 0 and max_depth > 0:
        n = heap_push(hs, ha, hb, n, _edge(p0, 0, cal, use_cal, alpha), 0, 0)
    while n > 0 and size < budget:
        v, p, r, n = heap_pop(hs, ha, hb, n)
        t, _ = _cand(ctok, cval, ptok, pval, src[p], row[p], r)
        e = v / val[p]                                     # this edge's value
        # the parent's next sibling candidate: value capped by this one (rows sorted best first)
        if r + 1 < kk:
            t2, p2 = _cand(ctok, cval, ptok, pval, src[p], row[p], r + 1)
            if t2 >= 0:
                e2 = _edge(p2, r + 1, cal, use_cal, alpha)
                if e2 > e:
                    e2 = e
                if e2 > 0.0:
                    n = heap_push(hs, ha, hb, n, val[p] * e2, p, r + 1)
        if tree_find(tok, fc, ns, p, t) >= 0:              # a duplicate id in the row: skip it
            continue
        size = tree_add(tok, par, sc, fc, ns, dep, size, p, t, v)
        i = size - 1
        val[i] = v
        src[i] = -1
        if dep[i] >= max_depth:
            continue
        if src[p] == 0:
            key = ckey[row[p], r]
        else:
            key = t                                         # pair rows: keys are tokens
        if key < 0 or key >= nkeys:
            continue
        _select_row(ckey, pkeys, use_pairs, vocab, tok[p], t, key, one, two)
        src[i] = one[0]
        row[i] = two[0]
        t1, p1 = _cand(ctok, cval, ptok, pval, src[i], row[i], 0)
        if t1 >= 0:
            e1 = _edge(p1, 0, cal, use_cal, alpha)
            if e1 > 0.0:
                n = heap_push(hs, ha, hb, n, v * e1, i, 0)
    return size


@njit(cache=True)
def build_dynamic_batch(ctok, cval, ckey, ptok, pval, pkeys, use_pairs, roots, root_keys, root_prevs, budgets,
                        cal, use_cal, alphas, max_depth, tok, par, sc, sizes, fc, ns, dep, val, src, row,
                        hs, ha, hb):
    """One tree per request: row i of (tok, par, sc) gets the tree of roots[i]."""
    for i in range(roots.shape[0]):
        tree_init(tok[i], par[i], sc[i], fc, ns, dep, roots[i])
        sizes[i] = grow_dynamic(ctok, cval, ckey, ptok, pval, pkeys, use_pairs, root_keys[i], root_prevs[i],
                                cal, use_cal, alphas[i], max_depth, budgets[i], tok[i], par[i], sc[i], fc, ns,
                                dep, val, src, row, hs, ha, hb)


class DynamicScratch:
    """Output rows and per-node scratch for a batch of dynamic trees (allocated per call)."""

    def __init__(self, batch: int, width: int):
        from .tree_build import TreeScratch
        self.rows = TreeScratch(batch, width, 2 * width + 2)
        self.val = np.empty(width, np.float64)
        self.src = np.empty(width, np.int64)
        self.row = np.empty(width, np.int64)


_NO_PAIRS = (np.full((1, 1), -1, np.int32), np.full((1, 1), -1.0, np.float32), np.full(16, -1, np.int64))
_NO_CAL = np.ones((1, 11), np.float64)


def build_dynamic(ctok, cval, ckey, roots, root_keys, budgets, *, max_depth: int = 64, pairs=None,
                  root_prevs=None, cal=None, alphas=None):
    """Batched dynamic trees over a dense candidate graph; returns a list of DraftTree.

    ``cval`` holds edge values (``cal`` None) or raw probabilities calibrated by ``cal``.
    ``pairs`` = (ptok, pval, pkeys) of a pair cache (keys must then be tokens).
    """
    ctok = np.ascontiguousarray(ctok, np.int32)
    cval = np.ascontiguousarray(cval, np.float32)
    ckey = np.ascontiguousarray(ckey, np.int32)
    roots = np.ascontiguousarray(roots, np.int32)
    b = roots.shape[0]
    root_keys = np.ascontiguousarray(root_keys, np.int64)
    budgets = np.ascontiguousarray(budgets, np.int64)
    width = int(budgets.max()) if b else 1
    s = DynamicScratch(b, width)
    ptok, pval, pkeys = _NO_PAIRS if pairs is None else pairs
    prev = np.full(b, -1, np.int64) if root_prevs is None else np.ascontiguousarray(root_prevs, np.int64)
    al = np.ones(b, np.float64) if alphas is None else np.ascontiguousarray(alphas, np.float64)
    t = s.rows
    build_dynamic_batch(ctok, cval, ckey, ptok, pval, pkeys, pairs is not None, roots, root_keys, prev, budgets,
                        _NO_CAL if cal is None else np.ascontiguousarray(cal, np.float64), cal is not None, al,
                        int(max_depth), t.tok, t.par, t.sc, t.sizes, t.fc, t.ns, t.dep, s.val, s.src, s.row,
                        t.hs, t.ha, t.hb)
    return t.trees()
