"""Compiled draft-tree construction under a node budget.

A tree under construction is a set of per-request rows (``tok``, ``par``, ``sc``) plus
scratch links (``fc`` first child, ``ns`` next sibling, ``dep`` depth) so that adding a
(parent, token) child is a trie union: an existing sibling with that token is reused
(its score raised to the max), so siblings stay distinct by construction.

Growers, all best-first by score with a bounded max-heap:
* :func:`fill_template` - a static tree template over the adjacency table (Token Recycling);
* :func:`grow_from_borders` - the union of retrieval-automaton subtrees below a set of
  border states, scored by occurrence frequencies (suffix decoding);
* :func:`grow_fused`    - RACER: those retrieved subtrees plus a dynamic logits tree from
  the adjacency table (child score = parent score x rank prior, so breadth decays with
  depth on its own), both frontiers best-first in one trie.

Because every grower pops in non-increasing score order and children never outscore their
parents, the nodes kept under a budget are always the best-scoring ancestor-closed set.
"""
from __future__ import annotations

import heapq

import numpy as np
from numba import njit

from .errors import ConfigError
from .adjacency import pair_row
from .calibration import NBINS, edge_value, prob_bin
from .ngram_automaton import DEPTH, FIRST_CHILD, FREQ, NEXT_SIBLING, TOKEN

__all__ = ["tree_init", "tree_find", "tree_add", "heap_push", "heap_pop", "grow_fused",
           "grow_from_borders", "fill_template", "best_first_template", "TreeScratch"]


# --------------------------------------------------------------------------- tree rows
@njit(cache=True)
def tree_init(tok, par, sc, fc, ns, dep, root_token):
    tok[0] = root_token
    par[0] = -1
    sc[0] = 1.0
    fc[0] = -1
    ns[0] = -1
    dep[0] = 0
    return 1


@njit(cache=True)
def tree_find(tok, fc, ns, parent, token):
    c = fc[parent]
    while c >= 0:
        if tok[c] == token:
            return c
        c = ns[c]
    return -1


@njit(cache=True)
def tree_add(tok, par, sc, fc, ns, dep, size, parent, token, score):
    """Append a child (the caller checked that no sibling carries ``token`` and size < budget)."""
    tok[size] = token
    par[size] = parent
    sc[size] = score
    fc[size] = -1
    dep[size] = dep[parent] + 1
    ns[size] = fc[parent]
    fc[parent] = size
    return size + 1


# --------------------------------------------------------------------------- bounded max-heap
@njit(cache=True)
def heap_push(hs, ha, hb, n, s, a, b):
    """Push (score s, payload a, b); a full heap drops the push (bounded work per tree)."""
    if n >= hs.shape[0]:
        return n
    i = n
    while i > 0:
        p = (i - 1) >> 1
        if hs[p] >= s:
            break
        hs[i] = hs[p]
        ha[i] = ha[p]
        hb[i] = hb[p]
        i = p
    hs[i] = s
    ha[i] = a
    hb[i] = b
    return n + 1


@njit(cache=True)
def heap_pop(hs, ha, hb, n):
    s, a, b = hs[0], ha[0], hb[0]
    n -= 1
    if n > 0:
        ls, la, lb = hs[n], ha[n], hb[n]
        i = 0
        while True:
            c = 2 * i + 1
            if c >= n:
                break
            if c + 1 < n and hs[c + 1] > hs[c]:
                c += 1
            if hs[c] <= ls:
                break
            hs[i] = hs[c]
            ha[i] = ha[c]
            hb[i] = hb[c]
            i = c
        hs[i] = ls
        ha[i] = la
        hb[i] = lb
    return s, a, b, n


# --------------------------------------------------------------------------- growers
@njit(cache=True, inline="always")
def _candidate(adj, prows, rowsel, tok, p, r):
    """Rank-r adjacency candidate after node p: its pair row if it has one, else its token row."""
    if rowsel[p] >= 0:
        return prows[rowsel[p], r]
    return adj[tok[p], r]


@njit(cache=True, inline="always")
def _logits_edge(lv, tok, p, r, prior):
    """Value of node p's rank-r adjacency candidate as an edge: the rank prior (static), or
    (dynamic, ``lv`` = (use, token-row probs, pair-row probs, calibration of each, alpha,
    rowsel)) the calibrated probability the target gave it, times alpha, capped at 1."""
    use, adjp, pprobs, cal, pcal, alpha, rowsel, rcal = lv
    if not use:
        return prior[r]
    if rowsel[p] >= 0:
        e = edge_value(pcal, r, pprobs[rowsel[p], r]) * alpha
    else:
        e = edge_value(cal, r, adjp[tok[p], r]) * alpha
    return e if e < 1.0 else 1.0


@njit(cache=True, inline="always")
def _logits_bin(lv, tok, p, r, k):
    """Calibration cell of node p's rank-r candidate: row R + r (token rows) or R + k + r
    (pair rows), R = the retrieval rows, times 16, plus the bin of its raw probability."""
    use, adjp, pprobs, cal, pcal, alpha, rowsel, rcal = lv
    nr = rcal.shape[0]
    if rowsel[p] >= 0:
        return (nr + k + r) * 16 + prob_bin(pprobs[rowsel[p], r])
    return (nr + r) * 16 + prob_bin(adjp[tok[p], r])


#: retrieval calibration rows: by the automaton depth of the drafted node, i.e. how many
#: context tokens its pattern matched (a 1-token match predicts far worse than a 6-token
#: one at the same frequency ratio); depth <= 2, 3, 4-5, >= 6
RETRIEVAL_CLASS_NAMES = ("match <= 2", "match 3", "match 4-5", "match >= 6")
RETRIEVAL_CLASSES = len(RETRIEVAL_CLASS_NAMES)


@njit(cache=True, inline="always")
def match_class(depth, nclasses):
    """Retrieval calibration row of an automaton node of this depth (0 .. nclasses - 1)."""
    c = 0 if depth <= 2 else (1 if depth == 3 else (2 if depth <= 5 else 3))
    return c if c < nclasses else nclasses - 1


@njit(cache=True, inline="always")
def _retrieval_cell(nodes, c, scale, denom, lv):
    """(score, cell) of retrieved automaton node c under a parent scored ``scale``, its
    frequency ratio being freq[c] / ``denom``: dynamic trees value the edge by the
    calibrated acceptance of its cell (match class, ratio bin), static trees by the ratio
    (computed as scale * freq / denom, the paper's order, so that scores and therefore
    ties against the logits frontier are bit-identical). The cell is class * 16 + bin."""
    f = nodes[c, FREQ]
    bn = prob_bin(f / denom)
    rcal = lv[7]
    cls = match_class(nodes[c, DEPTH], rcal.shape[0])
    v = scale * rcal[cls, bn] if lv[0] else scale * f / denom
    return v, cls * 16 + bn


@njit(cache=True)
def _push_logits_child(adj, pkeys, prows, use_pairs, root_prev, prior, tok, par, lsc, lrun, expanded,
                       rowsel, i, logits_depth, lh, n, lv):
    """Queue node i's rank-0 adjacency candidate (once per node, within the depth cap)."""
    if expanded[i] or lrun[i] >= logits_depth:
        return n
    expanded[i] = 1
    t = tok[i]
    vocab = adj.shape[0]
    if t < 0 or t >= vocab:
        return n
    rowsel[i] = -1
    if use_pairs:
        prev = root_prev if i == 0 else tok[par[i]]
        rowsel[i] = pair_row(pkeys, prev, t, vocab)
    if _candidate(adj, prows, rowsel, tok, i, 0) < 0:
        return n
    hs, ha, hb = lh
    return heap_push(hs, ha, hb, n, lsc[i] * _logits_edge(lv, tok, i, 0, prior), i, 0)


@njit(cache=True)
def grow_fused(nodes, borders, norms, weights, nb, retrieval_limit, retrieval_first,
               adj, pkeys, prows, use_pairs, root_prev, prior, logits_depth,
               tok, par, sc, fc, ns, dep, lsc, lrun, expanded, rowsel, size, budget, rh, lh, lv, ebin):
    """RACER's tree: retrieved continuations and a logits tree, merged by trie union.

    Two best-first frontiers:
    * retrieval (heap ``rh``): automaton nodes below ``borders[:nb]``; a child c of border j
      scores weights[j] * freq[c] / norms[j], deeper nodes multiply by freq ratios;
    * logits (heap ``lh``): the adjacency candidates of every node in the tree, root and
      retrieved nodes included (so retrieved paths are extended by recycled logits); a
      rank-r candidate scores (its parent's score) x prior[r]. A node's candidates come
      from the pair-keyed row of (its parent's token, its token) when ``use_pairs`` and
      that row exists (``root_prev`` is the token before the root), else from its token's
      row. A node's rank-r candidate is queued when its rank-(r-1) one is taken (priors
      decrease with rank): at most two pushes per node. At most ``logits_depth`` logits
      nodes follow each other.
      Dynamic trees (``lv[0]`` true): a candidate's edge value is its calibrated target
      probability instead of prior[r] (see :func:`_logits_edge`), capped by its previous
      sibling's so the rank order stays best first. A retrieval edge's value is its
      calibrated acceptance ``rcal[class, bin(ratio)]`` (``lv[7]``; class: the matched
      length, see :func:`match_class`), and ``ebin[i]`` records the calibration cell of
      node i (-1: none) so that observe can score it.

    ``retrieval_first``: drain retrieval first (up to ``retrieval_limit`` nodes), then
    logits (the paper's order); otherwise the frontier with the higher score goes next,
    so both sources compete for the budget on estimated acceptance probability.
    Reaching an existing node merges (max score) without spending budget.
    """
    kk = min(adj.shape[1], prior.shape[0])
    rs, ra, rb = rh
    ls_, la, lb = lh
    nr = 0
    for j in range(nb):
        c = nodes[borders[j], FIRST_CHILD]
        while c >= 0:
            v, cell = _retrieval_cell(nodes, c, weights[j], norms[j], lv)
            nr = heap_push(rs, ra, rb, nr, v, c, cell)   # payload b = parent * 64 + cell
            c = nodes[c, NEXT_SIBLING]
    lsc[0] = 1.0
    lrun[0] = 0
    expanded[0] = 0
    nl = _push_logits_child(adj, pkeys, prows, use_pairs, root_prev, prior, tok, par, lsc, lrun, expanded,
                            rowsel, 0, logits_depth, lh, 0, lv)
    retrieved = 0
    while size < budget:
        use_r = nr > 0 and retrieved < retrieval_limit - 1
        if use_r and nl > 0 and not retrieval_first:
            use_r = rs[0] >= ls_[0]
        if use_r:
            s, c, pb, nr = heap_pop(rs, ra, rb, nr)
            p = pb >> 6
            t = nodes[c, TOKEN]
            i = tree_find(tok, fc, ns, p, t)
            if i < 0:
                size = tree_add(tok, par, sc, fc, ns, dep, size, p, t, s)
                i = size - 1
                lsc[i] = s
                expanded[i] = 0
                retrieved += 1
                ebin[i] = pb & 63               # rows 0 .. R - 1: retrieval
            elif s > sc[i]:
                sc[i] = s
                lsc[i] = max(lsc[i], s)
            lrun[i] = 0
            fpar = nodes[c, FREQ]
            g = nodes[c, FIRST_CHILD]
            while g >= 0:
                v, cell = _retrieval_cell(nodes, g, s, fpar, lv)
                nr = heap_push(rs, ra, rb, nr, v, g, i * 64 + cell)
                g = nodes[g, NEXT_SIBLING]
        elif nl > 0:
            s, p, r, nl = heap_pop(ls_, la, lb, nl)
            t = _candidate(adj, prows, rowsel, tok, p, r)
            if r + 1 < kk and _candidate(adj, prows, rowsel, tok, p, r + 1) >= 0:
                e = _logits_edge(lv, tok, p, r + 1, prior)
                if lv[0] and e * lsc[p] > s:
                    e = s / lsc[p]
                nl = heap_push(ls_, la, lb, nl, lsc[p] * e, p, r + 1)
            i = tree_find(tok, fc, ns, p, t)
            if i < 0:
                size = tree_add(tok, par, sc, fc, ns, dep, size, p, t, s)
                i = size - 1
                lsc[i] = s
                lrun[i] = lrun[p] + 1
                expanded[i] = 0
                ebin[i] = _logits_bin(lv, tok, p, r, adj.shape[1]) if lv[0] else -1
            elif s > sc[i]:
                sc[i] = s
        else:
            break
        nl = _push_logits_child(adj, pkeys, prows, use_pairs, root_prev, prior, tok, par, lsc, lrun, expanded,
                                rowsel, i, logits_depth, lh, nl, lv)
    return size


@njit(cache=True)
def grow_from_borders(nodes, borders, norms, weights, nb, min_cond, max_out_depth,
                      tok, par, sc, fc, ns, dep, size, limit, hs, ha, hb):
    """Best-first union of the automaton subtrees hanging below ``borders[:nb]``.

    A child c of border j scores weights[j] * freq[c] / norms[j] (the estimated probability
    that the context continues with c); deeper nodes multiply by freq[g] / freq[parent].
    Children whose conditional probability is below ``min_cond`` are not drafted. Returns
    (size, expected accepted tokens = sum of the scores of the nodes added).
    """
    n = 0
    for j in range(nb):
        b = borders[j]
        z = norms[j]
        w = weights[j]
        c = nodes[b, FIRST_CHILD]
        while c >= 0:
            cond = nodes[c, FREQ] / z
            if cond >= min_cond:
                n = heap_push(hs, ha, hb, n, w * cond, c, 0)
            c = nodes[c, NEXT_SIBLING]
    total = 0.0
    while n > 0 and size < limit:
        s, c, p, n = heap_pop(hs, ha, hb, n)
        t = nodes[c, TOKEN]
        i = tree_find(tok, fc, ns, p, t)
        if i < 0:
            size = tree_add(tok, par, sc, fc, ns, dep, size, p, t, s)
            i = size - 1
            total += s
        elif s > sc[i]:
            total += s - sc[i]
            sc[i] = s
        if dep[i] < max_out_depth:
            fpar = nodes[c, FREQ]
            g = nodes[c, FIRST_CHILD]
            while g >= 0:
                cond = nodes[g, FREQ] / fpar
                if cond >= min_cond:
                    n = heap_push(hs, ha, hb, n, s * cond, g, i)
                g = nodes[g, NEXT_SIBLING]
    return size, total


@njit(cache=True)
def fill_template(adj, t_parent, t_rank, t_score, budget, tok, par, sc, fc, ns, dep, slot_map):
    """Instantiate a static template (nodes in rank order, parents first) from the adjacency
    table: template node j is the t_rank[j]-th candidate after its parent's token. Nodes
    whose token is unknown (-1) are skipped with their subtrees; the first ``budget`` nodes
    that exist are kept, so smaller budgets truncate the template by rank order."""
    vocab = adj.shape[0]
    size = 1
    slot_map[0] = 0
    for j in range(1, t_parent.shape[0]):
        slot_map[j] = -1
        if size >= budget:
            continue
        p = slot_map[t_parent[j]]
        if p < 0:
            continue
        pt = tok[p]
        if pt < 0 or pt >= vocab:
            continue
        t = adj[pt, t_rank[j]]
        if t < 0 or tree_find(tok, fc, ns, p, t) >= 0:
            continue
        size = tree_add(tok, par, sc, fc, ns, dep, size, p, t, t_score[j])
        slot_map[j] = size - 1
    return size


# --------------------------------------------------------------------------- templates and scratch
def best_first_template(prior, n_nodes: int, max_depth: int):
    """The ``n_nodes`` highest-value nodes (plus root) of the infinite k-ary tree in which the
    rank-r child of a node is accepted with probability prior[r] given its parent: a static
    tree whose breadth decays with depth. Returns (parents, ranks, scores), rank order."""
    prior = [float(p) for p in prior]
    if not prior or any(not 0.0 < p <= 1.0 for p in prior):
        raise ConfigError(f"rank priors must lie in (0, 1], got {prior}")
    parents, ranks, scores, depths = [-1], [-1], [1.0], [0]
    heap = [(-prior[r], 0, r) for r in range(len(prior))]   # (-score, parent node, rank)
    heapq.heapify(heap)
    while heap and len(parents) < n_nodes + 1:
        neg, p, r = heapq.heappop(heap)
        node = len(parents)
        parents.append(p)
        ranks.append(r)
        scores.append(-neg)
        depths.append(depths[p] + 1)
        if depths[node] < max_depth:
            for r2, q in enumerate(prior):
                heapq.heappush(heap, (neg * q, node, r2))
    return (np.array(parents, np.int32), np.array(ranks, np.int32), np.array(scores, np.float32))


class TreeScratch:
    """Per-batch output rows and scratch arrays, allocated once per propose call."""

    __slots__ = ("tok", "par", "sc", "fc", "ns", "dep", "lsc", "lrun", "expanded", "rowsel", "sizes",
                 "hs", "ha", "hb", "heap2")

    def __init__(self, batch: int, width: int, heap: int):
        self.tok = np.empty((batch, width), np.int32)
        self.par = np.empty((batch, width), np.int32)
        self.sc = np.empty((batch, width), np.float32)
        self.fc = np.empty(width, np.int32)
        self.ns = np.empty(width, np.int32)
        self.dep = np.empty(width, np.int32)
        self.lsc = np.empty(width, np.float64)
        self.lrun = np.empty(width, np.int32)
        self.expanded = np.empty(width, np.uint8)
        self.rowsel = np.empty(width, np.int64)
        self.sizes = np.empty(batch, np.int32)
        self.hs = np.empty(heap, np.float64)
        self.ha = np.empty(heap, np.int64)
        self.hb = np.empty(heap, np.int64)
        self.heap2 = (np.empty(heap, np.float64), np.empty(heap, np.int64), np.empty(heap, np.int64))

    @property
    def heap(self):
        return (self.hs, self.ha, self.hb)

    def trees(self):
        """The batch as DraftTree objects: views into the rows, no copies.

        The rows already have the tree's dtypes and are valid by construction (the growers
        keep parents before children and siblings distinct; tests validate them), so the
        objects are made without DraftTree.__init__'s coercions: about 3x cheaper, which
        matters at 256 trees per step.
        """
        from .tree import DraftTree
        new = DraftTree.__new__
        tok, par, sc = self.tok, self.par, self.sc
        out = []
        for i, n in enumerate(self.sizes.tolist()):
            t = new(DraftTree)
            t.tokens = tok[i, :n]
            t.parents = par[i, :n]
            t.scores = sc[i, :n]
            out.append(t)
        return out
