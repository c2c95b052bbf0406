"""Dynamic draft trees: greedy best-first expansion over a candidate graph (DySpec, EAGLE-2).

Input, a **candidate graph** (:class:`CandidateGraph`) in dense form: for every key K (a
token for adjacency rows, an automaton state, a lattice position...), up to k candidate
rows sorted best first:

    tokens[K, r]   the candidate's token (-1: no more candidates in this row)
    values[K, r]   its value as an edge: the estimated P(accepted | parent accepted), in (0, 1]
                   (raw probabilities, or calibrated ones: see ``calibration`` below)
    keys[K, r]     the key of the node it becomes (-1: a leaf, nothing below it)

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
* :class:`Calibration` (``use``): ``values`` holds raw target probabilities (or -1:
  unknown) and the edge value is ``table[r, bin(p)]`` (:mod:`.calibration`), times
  ``alpha`` (a per-request multiplier), capped at 1; values are made non-increasing along
  each row on the fly.
* pair rows (:class:`.tree_build.PairTable`; keys are tokens): a node whose (parent token,
  token) pair has a row in the pair cache (:mod:`.adjacency`) takes its candidates from
  there instead.

Why this grower is not merged with :func:`.tree_build.grow_fused`: see the note there.
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np
from numba import njit

from .adjacency import pair_row
from .calibration import edge_value
from .tree_build import (
    PairTable,
    TreeScratch,
    heap_pop_arrays,
    heap_push_arrays,
    tree_add_arrays,
    tree_find_arrays,
    tree_init,
    tree_rows,
)

__all__ = ["CandidateGraph", "Calibration", "DynamicNodes", "grow_dynamic", "build_dynamic", "build_dynamic_batch"]

#: The candidate graph (see the module doc): ``tokens`` int32, ``values`` float32 and
#: ``keys`` int32, all [keys, k].
CandidateGraph = namedtuple("CandidateGraph", ["tokens", "values", "keys"])
#: Edge calibration: ``table`` [k, NBINS + 1] float64 when ``use`` (the graph's values are
#: then raw probabilities), else a placeholder (the values are edge values already).
Calibration = namedtuple("Calibration", ["table", "use"])
#: Per-node scratch [width]: ``value`` (float64 path value), ``source`` (the candidate row
#: it drafts from: 0 the graph, 1 the pair rows, -1 none) and ``row`` (that row's index).
DynamicNodes = namedtuple("DynamicNodes", ["value", "source", "row"])

#: DynamicNodes.source
FROM_GRAPH, FROM_PAIRS, NO_ROW = 0, 1, -1


@njit(cache=True)
def _candidate(graph_tokens, graph_values, pair_tokens, pair_probs, source, row, rank):
    """(token, raw value) of the rank-``rank`` candidate in ``row`` of ``source``."""
    if source == FROM_PAIRS:
        return pair_tokens[row, rank], pair_probs[row, rank]
    return graph_tokens[row, rank], graph_values[row, rank]


@njit(cache=True)
def _edge_value(raw, rank, table, use_table, alpha):
    v = edge_value(table, rank, raw) * alpha if use_table else raw
    return v if v < 1.0 else 1.0


@njit(cache=True)
def _select_row(use_pairs, pair_keys, vocab, parent_token, token, key):
    """(source, row) a node drafts from: its (parent token, token) pair row when there is
    one (``use_pairs``; ``pair_keys``: the :class:`.tree_build.PairTable` keys), else row
    ``key`` of the graph."""
    if use_pairs:
        slot = pair_row(pair_keys, parent_token, token, vocab)
        if slot >= 0:
            return FROM_PAIRS, np.int64(slot)
    return FROM_GRAPH, np.int64(key)


@njit(cache=True)
def grow_dynamic(graph, pairs, calibration, alpha, root_key, root_prev, max_depth, budget, tree, nodes, heap):
    """Grow one tree (:class:`.tree_build.TreeRows`, its root already set by
    :func:`tree_init`) to at most ``budget`` nodes from row ``root_key`` of the graph
    (``root_prev``: the token before the root, for pair rows); returns its size. ``nodes``:
    :class:`DynamicNodes` scratch; the heap (payload: tree parent, rank) holds at most
    2 * budget + 1 entries."""
    # the groups taken apart once; helpers are given arrays, not groups (see the note at
    # .tree_build.tree_find_arrays)
    graph_tokens, graph_values, graph_keys = graph.tokens, graph.values, graph.keys
    pair_keys, pair_tokens, pair_probs, use_pairs = pairs.keys, pairs.tokens, pairs.probs, pairs.use
    table, use_table = calibration.table, calibration.use
    path_value, sources, rows = nodes.value, nodes.source, nodes.row
    tokens, parents, scores = tree.tokens, tree.parents, tree.scores
    first_child, next_sibling, depth = tree.first_child, tree.next_sibling, tree.depth
    heap_scores, heap_parents, heap_ranks = heap.scores, heap.first, heap.second
    n_keys = graph_tokens.shape[0]
    n_ranks = graph_tokens.shape[1]
    vocab = n_keys
    path_value[0] = 1.0
    size = 1
    n = 0
    if root_key < 0 or root_key >= n_keys or budget <= 1:
        return size
    sources[0], rows[0] = _select_row(use_pairs, pair_keys, vocab, root_prev, tokens[0], root_key)
    token0, raw0 = _candidate(graph_tokens, graph_values, pair_tokens, pair_probs, sources[0], rows[0], 0)
    if token0 >= 0 and max_depth > 0:
        n = heap_push_arrays(
            heap_scores, heap_parents, heap_ranks, n, _edge_value(raw0, 0, table, use_table, alpha), 0, 0
        )
    while n > 0 and size < budget:
        value, parent, rank, n = heap_pop_arrays(heap_scores, heap_parents, heap_ranks, n)
        source, row = sources[parent], rows[parent]
        token, _ = _candidate(graph_tokens, graph_values, pair_tokens, pair_probs, source, row, rank)
        edge = value / path_value[parent]  # this edge's value
        # the parent's next sibling candidate: value capped by this one (rows sorted best first)
        if rank + 1 < n_ranks:
            sibling, sibling_raw = _candidate(
                graph_tokens, graph_values, pair_tokens, pair_probs, source, row, rank + 1
            )
            if sibling >= 0:
                sibling_edge = _edge_value(sibling_raw, rank + 1, table, use_table, alpha)
                if sibling_edge > edge:
                    sibling_edge = edge
                if sibling_edge > 0.0:
                    n = heap_push_arrays(
                        heap_scores, heap_parents, heap_ranks, n, path_value[parent] * sibling_edge, parent, rank + 1
                    )
        # a duplicate id in the row: skip it
        if tree_find_arrays(tokens, first_child, next_sibling, parent, token) >= 0:
            continue
        size = tree_add_arrays(tokens, parents, scores, first_child, next_sibling, depth, size, parent, token, value)
        i = size - 1
        path_value[i] = value
        sources[i] = NO_ROW
        if depth[i] >= max_depth:
            continue
        if source == FROM_GRAPH:
            key = graph_keys[row, rank]
        else:
            key = token  # pair rows: keys are tokens
        if key < 0 or key >= n_keys:
            continue
        sources[i], rows[i] = _select_row(use_pairs, pair_keys, vocab, tokens[parent], token, key)
        child, child_raw = _candidate(graph_tokens, graph_values, pair_tokens, pair_probs, sources[i], rows[i], 0)
        if child >= 0:
            child_edge = _edge_value(child_raw, 0, table, use_table, alpha)
            if child_edge > 0.0:
                n = heap_push_arrays(heap_scores, heap_parents, heap_ranks, n, value * child_edge, i, 0)
    return size


@njit(cache=True, nogil=True)
def build_dynamic_batch(
    graph,
    pairs,
    calibration,
    roots,
    root_keys,
    root_prevs,
    budgets,
    alphas,
    max_depth,
    buffers,
    nodes,
    heap,
    first,
    last,
):
    """One tree per request: row i of the :class:`.tree_build.TreeBuffers` gets the tree of
    roots[i] (graph row root_keys[i], budget budgets[i], alpha alphas[i]), for i in
    [first, last) (one worker's rows; ``nodes`` and ``heap`` are that worker's scratch)."""
    for i in range(first, last):
        tree = tree_rows(buffers, i)
        tree_init(tree, roots[i])
        buffers.sizes[i] = grow_dynamic(
            graph, pairs, calibration, alphas[i], root_keys[i], root_prevs[i], max_depth, budgets[i], tree, nodes, heap
        )


class DynamicScratch:
    """Output rows and per-node scratch for a batch of dynamic trees (allocated per call):
    ``buffers`` and ``heap`` of a :class:`.tree_build.TreeScratch`, ``nodes``
    (:class:`DynamicNodes`); with ``workers`` > 1, one set of scratch per worker thread
    (:meth:`worker`)."""

    def __init__(self, batch: int, width: int, workers: int = 1):
        self.scratch = TreeScratch(batch, width, 2 * width + 2, workers=workers)
        self.buffers = self.scratch.buffers
        self.heap = self.scratch.heap
        self._nodes = [
            DynamicNodes(np.empty(width, np.float64), np.empty(width, np.int64), np.empty(width, np.int64))
            for _ in range(max(1, int(workers)))
        ]
        self.nodes = self._nodes[0]

    def worker(self, j: int):
        """Worker j's (buffers, nodes, heap)."""
        buffers, heap, _, _ = self.scratch.worker(j)
        return buffers, self._nodes[j], heap

    def trees(self):
        return self.scratch.trees()


#: no pair rows (placeholder arrays)
NO_PAIRS = PairTable(
    keys=np.full(16, -1, np.int64),
    tokens=np.full((1, 1), -1, np.int32),
    probs=np.full((1, 1), -1.0, np.float32),
    use=False,
)
_NO_CAL = np.ones((1, 11), np.float64)


def build_dynamic(
    ctok,
    cval,
    ckey,
    roots,
    root_keys,
    budgets,
    *,
    max_depth: int = 64,
    pairs=None,
    root_prevs=None,
    cal=None,
    alphas=None,
):
    """Batched dynamic trees over a dense candidate graph (tokens ``ctok``, values ``cval``,
    keys ``ckey``); returns a list of DraftTree.

    ``cval`` holds edge values (``cal`` None) or raw probabilities calibrated by ``cal``.
    ``pairs`` = (tokens, probs, keys) of a pair cache (keys must then be tokens).
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
    if pairs is None:
        pair_table = NO_PAIRS
    else:
        ptok, pval, pkeys = pairs
        pair_table = PairTable(keys=pkeys, tokens=ptok, probs=pval, use=True)
    prev = np.full(b, -1, np.int64) if root_prevs is None else np.ascontiguousarray(root_prevs, np.int64)
    al = np.ones(b, np.float64) if alphas is None else np.ascontiguousarray(alphas, np.float64)
    calibration = Calibration(_NO_CAL if cal is None else np.ascontiguousarray(cal, np.float64), cal is not None)
    build_dynamic_batch(
        CandidateGraph(ctok, cval, ckey),
        pair_table,
        calibration,
        roots,
        root_keys,
        prev,
        budgets,
        al,
        int(max_depth),
        s.buffers,
        s.nodes,
        s.heap,
        0,
        b,
    )
    return s.trees()
