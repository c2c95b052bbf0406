"""Compiled draft-tree construction under a node budget.

A tree under construction is a :class:`TreeRows` group: its output rows (``tokens``,
``parents``, ``scores``) plus scratch links (``first_child``, ``next_sibling``, ``depth``)
so that adding a (parent, token) child is a trie union: an existing sibling with that
token is reused (its score raised to the max), so siblings stay distinct by construction.
Kernels take their arguments in such named groups (numba compiles ``namedtuple``
arguments like positional ones):
:class:`TreeBuffers` (a batch of output rows, built once per call by :class:`TreeScratch`),
:class:`Heap`, :class:`Borders`, :class:`LogitsTable` / :class:`PairTable`,
:class:`EdgeValues`, :class:`FusedNodes`, :class:`Template`. Inside a growth loop groups
are not free (each array taken out of one is reference-counted): the growers take their
groups apart once, at the top, and their loops use arrays (see :func:`tree_find_arrays`).

Growers, all best-first by score with a bounded max-heap:
* :func:`fill_template` - a static tree template over the adjacency table (Token Recycling);
* :func:`grow_from_borders` - the union of retrieval-automaton subtrees below a set of
  border states, scored by occurrence frequencies (suffix decoding);
* :func:`grow_fused`    - RACER: those retrieved subtrees plus a dynamic logits tree from
  the adjacency table (child score = parent score x rank prior, so breadth decays with
  depth on its own), both frontiers best-first in one trie.

Because every grower pops in non-increasing score order and children never outscore their
parents, the nodes kept under a budget are always the best-scoring ancestor-closed set.

:func:`.dynamic_tree.grow_dynamic` is a fourth best-first grower, over a dense candidate
graph (rows sorted best first); see the comment at :func:`grow_fused` for why it is not
merged with these.
"""

from __future__ import annotations

import heapq
from collections import namedtuple

import numpy as np
from numba import njit

from .adjacency import pair_row
from .calibration import BIN_BITS, edge_value, pack_cell, prob_bin
from .errors import ConfigError
from .ngram_automaton import DEPTH, FIRST_CHILD, FREQ, NEXT_SIBLING, TOKEN
from .tree import DraftTree

__all__ = [
    "TreeBuffers",
    "TreeRows",
    "Heap",
    "Borders",
    "PairTable",
    "LogitsTable",
    "EdgeValues",
    "NO_WARP",
    "warped_prob",
    "FusedNodes",
    "Template",
    "tree_rows",
    "tree_init",
    "tree_find",
    "tree_add",
    "heap_push",
    "heap_pop",
    "pack_parent_cell",
    "unpack_parent_cell",
    "grow_fused",
    "grow_from_borders",
    "fill_template",
    "best_first_template",
    "new_heap",
    "TreeScratch",
]


# --------------------------------------------------------------------------- argument groups
#: A batch of trees under construction: output rows [batch, width] (``tokens`` int32,
#: ``parents`` int32, ``scores`` float32), ``sizes`` [batch] int32, and the trie links of
#: the one tree being grown (``first_child``, ``next_sibling``, ``depth`` [width] int32).
TreeBuffers = namedtuple(
    "TreeBuffers", ["tokens", "parents", "scores", "sizes", "first_child", "next_sibling", "depth"]
)
#: One tree being grown: its output rows [width] and the trie links (:func:`tree_rows`).
TreeRows = namedtuple("TreeRows", ["tokens", "parents", "scores", "first_child", "next_sibling", "depth"])
#: A bounded max-heap of (score float64, first int64, second int64) entries, one array each.
Heap = namedtuple("Heap", ["scores", "first", "second"])
#: Retrieval borders: automaton ``states`` whose subtrees are drafted, the count their
#: children's frequencies are divided by (``norms``) and the weight of their source.
Borders = namedtuple("Borders", ["states", "norms", "weights"])
#: Pair-keyed adjacency rows (:class:`.adjacency.PairAdjacency`): hash-slot ``keys`` of
#: (previous token, token), their candidate ``tokens`` and ``probs`` [slots, k]; ``use``
#: false: placeholder arrays, no pair rows.
PairTable = namedtuple("PairTable", ["keys", "tokens", "probs", "use"])
#: RACER's logits source: token-keyed adjacency rows (``tokens`` int32 / ``probs`` float32
#: [vocab, k]), the pair rows (:class:`PairTable`), the rank priors (static edge values,
#: float64 [k]) and ``max_run``, the most logits nodes that may follow each other.
LogitsTable = namedtuple("LogitsTable", ["tokens", "probs", "pairs", "rank_prior", "max_run"])
#: Edge values of RACER's trees: ``dynamic`` false: rank priors and raw frequency ratios
#: (the paper's static trees); true: the calibration tables [rows, NBINS + 1] of token
#: rows, pair rows (by rank) and retrieval (by match class, see :func:`match_class`),
#: logits edges times ``alpha``.
#: ``warp`` (float64 [3]: 1 / temperature, top-k, top-p; 1 / temperature 0: greedy) values
#: logits edges by the probability the request's sampling gives the candidate
#: (:func:`warped_prob`) instead of the stored temperature-1 probability.
EdgeValues = namedtuple("EdgeValues", ["dynamic", "token_rows", "pair_rows", "retrieval", "alpha", "warp"])
#: the ``warp`` of greedy requests: stored probabilities as they are
NO_WARP = np.zeros(3, np.float64)
#: The fused grower's per-node scratch [width]: ``path_score`` (float64: the score its
#: logits children build on), ``logits_run`` (logits nodes ending at it), ``expanded``
#: (its rank-0 logits candidate was queued), ``pair_slot`` (the pair row it drafts from,
#: -1: its token's row).
FusedNodes = namedtuple("FusedNodes", ["path_score", "logits_run", "expanded", "pair_slot"])
#: A static tree template in rank order, parents first (:func:`best_first_template`).
Template = namedtuple("Template", ["parents", "ranks", "scores"])

#: Retrieval heap entries carry (tree parent, calibration cell) in one int64 payload,
#: ``parent << CELL_BITS | cell``; a retrieval cell is ``pack_cell(match class, bin)``.
CELL_BITS = 6
CELL_MASK = (1 << CELL_BITS) - 1


@njit(cache=True, inline="always")
def pack_parent_cell(parent, cell):
    return (parent << CELL_BITS) | cell


@njit(cache=True, inline="always")
def unpack_parent_cell(packed):
    """(parent, cell) of a retrieval heap payload (see :func:`pack_parent_cell`)."""
    return packed >> CELL_BITS, packed & CELL_MASK


# --------------------------------------------------------------------------- tree rows
@njit(cache=True, inline="always")
def tree_rows(buffers, i):
    """Row i of a :class:`TreeBuffers` batch as the :class:`TreeRows` of one tree."""
    return TreeRows(
        buffers.tokens[i],
        buffers.parents[i],
        buffers.scores[i],
        buffers.first_child,
        buffers.next_sibling,
        buffers.depth,
    )


@njit(cache=True)
def tree_init(tree, root_token):
    tree.tokens[0] = root_token
    tree.parents[0] = -1
    tree.scores[0] = 1.0
    tree.first_child[0] = -1
    tree.next_sibling[0] = -1
    tree.depth[0] = 0
    return 1


# The group operations below (tree_find, tree_add, heap_push, heap_pop) are for callers
# outside the growth loops. The growers take their groups apart once, at the top, and call
# the ``*_arrays`` forms in the loop: every array taken out of a group, or handed to a
# helper, has its reference count raised and dropped again (numba's NRT; atomic calls that
# LLVM cannot prune across the loop's branches), so groups in the loop pay that per node.
# RACER at batch 256, budget 64: 1.40M such calls per step with groups in the loop, 0.75M
# with arrays (1.15M before the groups); see results/racer_propose_regression.md.
@njit(cache=True, inline="always")
def tree_find_arrays(tokens, first_child, next_sibling, parent, token):
    """:func:`tree_find` on the tree's arrays."""
    child = first_child[parent]
    while child >= 0:
        if tokens[child] == token:
            return child
        child = next_sibling[child]
    return -1


@njit(cache=True, inline="always")
def tree_add_arrays(tokens, parents, scores, first_child, next_sibling, depth, size, parent, token, score):
    """:func:`tree_add` on the tree's arrays."""
    tokens[size] = token
    parents[size] = parent
    scores[size] = score
    first_child[size] = -1
    depth[size] = depth[parent] + 1
    next_sibling[size] = first_child[parent]
    first_child[parent] = size
    return size + 1


@njit(cache=True)
def tree_find(tree, parent, token):
    """The child of ``parent`` carrying ``token``, or -1."""
    return tree_find_arrays(tree.tokens, tree.first_child, tree.next_sibling, parent, token)


@njit(cache=True)
def tree_add(tree, size, parent, token, score):
    """Append a child (the caller checked that no sibling carries ``token`` and size < budget)."""
    return tree_add_arrays(
        tree.tokens,
        tree.parents,
        tree.scores,
        tree.first_child,
        tree.next_sibling,
        tree.depth,
        size,
        parent,
        token,
        score,
    )


# --------------------------------------------------------------------------- bounded max-heap
@njit(cache=True, inline="always")
def heap_push_arrays(scores, firsts, seconds, n, score, first, second):
    """:func:`heap_push` on the heap's arrays."""
    if n >= scores.shape[0]:
        return n
    i = n
    while i > 0:
        up = (i - 1) >> 1
        if scores[up] >= score:
            break
        scores[i] = scores[up]
        firsts[i] = firsts[up]
        seconds[i] = seconds[up]
        i = up
    scores[i] = score
    firsts[i] = first
    seconds[i] = second
    return n + 1


@njit(cache=True, inline="always")
def heap_pop_arrays(scores, firsts, seconds, n):
    """:func:`heap_pop` on the heap's arrays."""
    score, first, second = scores[0], firsts[0], seconds[0]
    n -= 1
    if n > 0:
        last_score, last_first, last_second = scores[n], firsts[n], seconds[n]
        i = 0
        while True:
            child = 2 * i + 1
            if child >= n:
                break
            if child + 1 < n and scores[child + 1] > scores[child]:
                child += 1
            if scores[child] <= last_score:
                break
            scores[i] = scores[child]
            firsts[i] = firsts[child]
            seconds[i] = seconds[child]
            i = child
        scores[i] = last_score
        firsts[i] = last_first
        seconds[i] = last_second
    return score, first, second, n


@njit(cache=True)
def heap_push(heap, n, score, first, second):
    """Push (score, payload first, second) onto a heap of n entries; a full heap drops the
    push (bounded work per tree). Returns the new entry count."""
    return heap_push_arrays(heap.scores, heap.first, heap.second, n, score, first, second)


@njit(cache=True)
def heap_pop(heap, n):
    """The best entry of a heap of n > 0 entries: (score, first, second, n - 1)."""
    return heap_pop_arrays(heap.scores, heap.first, heap.second, n)


# --------------------------------------------------------------------------- growers
@njit(cache=True, inline="always")
def _candidate(row_tokens, pair_tokens, pair_slot, tokens, node, rank):
    """Rank-``rank`` adjacency candidate after ``node``: from its pair row if it has one
    (``pair_slot[node]`` >= 0), else from its token's row (``row_tokens``: the token rows of
    :class:`LogitsTable`, ``pair_tokens``: its :class:`PairTable` rows)."""
    slot = pair_slot[node]
    if slot >= 0:
        return pair_tokens[slot, rank]
    return row_tokens[tokens[node], rank]


@njit(cache=True)
def warped_prob(probs, rank, warp):
    """The probability a request sampling with ``warp`` (1 / temperature, top-k, top-p; see
    :class:`EdgeValues`) gives the rank-``rank`` entry of a stored top-k row ``probs``
    (temperature-1 probabilities, best first; < 0: unknown, returned as is).

    Temperature: p ** (1 / T) over a normaliser from the row and its tail (mass 1 - sum,
    taken as tokens as likely as the row's last, an upper bound of the tail for T < 1);
    top-k: ranks from k on get 0 and the tail drops out; top-p: a rank whose warped mass
    before it reaches p gets 0, the kept ones are renormalised by the nucleus's mass (the
    row's prefix that reaches p, or p where the row does not reach it)."""
    p = probs[rank]
    inv_t = warp[0]
    if p < 0.0 or inv_t <= 0.0:
        return p
    top_k = int(warp[1])
    top_p = warp[2]
    k = probs.shape[0]
    kept = k if top_k <= 0 or top_k > k else top_k
    if rank >= kept:
        return 0.0
    total = 0.0
    last = 0.0
    for j in range(k):
        q = probs[j]
        if q <= 0.0:
            break
        total += q
        last = q
    z = 0.0
    for j in range(kept):
        q = probs[j]
        if q <= 0.0:
            break
        z += q**inv_t
    if kept == k and last > 0.0 and total < 1.0:
        z += (1.0 - total) * last ** (inv_t - 1.0)
    if z <= 0.0:
        return 0.0
    w = p**inv_t / z
    if top_p >= 1.0:
        return w
    before = 0.0
    for j in range(rank):
        before += probs[j] ** inv_t / z
    if before >= top_p:
        return 0.0
    mass = before + w
    j = rank + 1
    while mass < top_p and j < kept and probs[j] > 0.0:
        mass += probs[j] ** inv_t / z
        j += 1
    if mass < top_p:
        mass = top_p
    return min(w / mass, 1.0)


@njit(cache=True, inline="always")
def _edge_prob(row_probs, pair_probs, pair_slot, tokens, node, rank, warp):
    """The stored probability of ``node``'s rank-``rank`` candidate (pair row first), under
    the request's ``warp``."""
    slot = pair_slot[node]
    if slot >= 0:
        return warped_prob(pair_probs[slot], rank, warp)
    return warped_prob(row_probs[tokens[node]], rank, warp)


@njit(cache=True, inline="always")
def _logits_edge(
    dynamic, rank_prior, row_probs, pair_probs, token_values, pair_values, alpha, pair_slot, tokens, node, rank, warp
):
    """Value of ``node``'s rank-``rank`` adjacency candidate as an edge: the rank prior
    (static), or (``dynamic``) the calibrated probability the target gave it (its stored
    probability in ``row_probs`` / ``pair_probs`` under the request's ``warp``, calibrated
    by the :class:`EdgeValues` tables ``token_values`` / ``pair_values``), times alpha,
    capped at 1."""
    if not dynamic:
        return rank_prior[rank]
    p = _edge_prob(row_probs, pair_probs, pair_slot, tokens, node, rank, warp)
    values = pair_values if pair_slot[node] >= 0 else token_values
    e = edge_value(values, rank, p) * alpha
    return e if e < 1.0 else 1.0


@njit(cache=True, inline="always")
def _logits_cell(n_retrieval, k, row_probs, pair_probs, pair_slot, tokens, node, rank, warp):
    """Calibration cell (:func:`.calibration.pack_cell`) of ``node``'s rank-``rank``
    candidate: row R + rank (token rows) or R + k + rank (pair rows), R = ``n_retrieval``
    rows, and the bin of its probability under ``warp``."""
    p = _edge_prob(row_probs, pair_probs, pair_slot, tokens, node, rank, warp)
    row = n_retrieval + k + rank if pair_slot[node] >= 0 else n_retrieval + rank
    return pack_cell(row, prob_bin(p))


#: retrieval calibration rows: by the automaton depth of the drafted node, i.e. how many
#: context tokens its pattern matched (a 1-token match predicts far worse than a 6-token
#: one at the same frequency ratio); depth <= 2, 3, 4-5, >= 6
RETRIEVAL_CLASS_NAMES = ("match <= 2", "match 3", "match 4-5", "match >= 6")
RETRIEVAL_CLASSES = len(RETRIEVAL_CLASS_NAMES)
assert RETRIEVAL_CLASSES << BIN_BITS <= 1 << CELL_BITS, (
    "retrieval cells (match class, probability bin) must fit in CELL_BITS of the heap payload"
)


@njit(cache=True, inline="always")
def match_class(depth, nclasses):
    """Retrieval calibration row of an automaton node of this depth (0 .. nclasses - 1)."""
    c = 0 if depth <= 2 else (1 if depth == 3 else (2 if depth <= 5 else 3))
    return c if c < nclasses else nclasses - 1


@njit(cache=True, inline="always")
def _retrieval_cell(automaton_nodes, node, scale, denom, dynamic, retrieval_values):
    """(score, cell) of retrieved automaton ``node`` under a parent scored ``scale``, its
    frequency ratio being freq[node] / ``denom``: dynamic trees value the edge by the
    calibrated acceptance of its cell (match class, ratio bin: ``retrieval_values``, the
    :class:`EdgeValues` retrieval table), static trees by the ratio (computed as
    scale * freq / denom, the paper's order, so that scores and therefore ties against the
    logits frontier are bit-identical). The cell is ``pack_cell(class, bin)``."""
    freq = automaton_nodes[node, FREQ]
    ratio_bin = prob_bin(freq / denom)
    cls = match_class(automaton_nodes[node, DEPTH], retrieval_values.shape[0])
    value = scale * retrieval_values[cls, ratio_bin] if dynamic else scale * freq / denom
    return value, pack_cell(cls, ratio_bin)


@njit(cache=True)
def grow_fused(
    automaton_nodes,
    borders,
    n_borders,
    retrieval_limit,
    retrieval_first,
    logits,
    edges,
    root_prev,
    tree,
    fused,
    cells,
    size,
    budget,
    retrieval_heap,
    logits_heap,
):
    """RACER's tree: retrieved continuations and a logits tree, merged by trie union.

    Two best-first frontiers:
    * retrieval (``retrieval_heap``): automaton nodes below ``borders.states[:n_borders]``;
      a child c of border j scores weights[j] * freq[c] / norms[j], deeper nodes multiply
      by freq ratios; an entry's payload is (automaton node, pack_parent_cell(tree parent,
      cell));
    * logits (``logits_heap``, payload (tree parent, rank)): the adjacency candidates of
      every node in the tree, root and retrieved nodes included (so retrieved paths are
      extended by recycled logits); a rank-r candidate scores (its parent's score) x
      prior[r]. A node's candidates come from the pair-keyed row of (its parent's token,
      its token) when ``logits.pairs.use`` and that row exists (``root_prev`` is the token
      before the root), else from its token's row. A node's rank-r candidate is queued
      when its rank-(r-1) one is taken (priors decrease with rank): at most two pushes per
      node. At most ``logits.max_run`` logits nodes follow each other.
      Dynamic trees (``edges.dynamic``): a candidate's edge value is its calibrated target
      probability instead of prior[r] (see :func:`_logits_edge`), capped by its previous
      sibling's so the rank order stays best first. A retrieval edge's value is its
      calibrated acceptance ``edges.retrieval[class, bin(ratio)]`` (class: the matched
      length, see :func:`match_class`), and ``cells[i]`` records the calibration cell of
      node i (-1: none) so that observe can score it.

    ``retrieval_first``: drain retrieval first (up to ``retrieval_limit`` nodes), then
    logits (the paper's order); otherwise the frontier with the higher score goes next,
    so both sources compete for the budget on estimated acceptance probability.
    Reaching an existing node merges (max score) without spending budget.

    Why this, :func:`grow_from_borders` and :func:`.dynamic_tree.grow_dynamic` are not one
    grower: their trees are pinned bit for bit (tests/test_behaviour_digest.py) and they
    differ where that shows. Retrieval here scores ``scale * freq / denom`` (the paper's
    order; grow_from_borders multiplies by the ratio, ``scale * (freq / denom)``, filters
    by ``min_cond`` and caps the depth), pushes every automaton child (sibling lists are
    not sorted by value) and merges a duplicate token by max score; grow_dynamic needs
    candidate rows sorted best first (it pushes a first child and a next sibling per
    node), skips duplicates instead of merging, and has one frontier. Merging them would
    move ties and change trees.
    """
    # the groups taken apart once (see the note at tree_find_arrays); the loop and its
    # helpers see arrays and scalars only
    nodes = automaton_nodes
    border_states, border_norms, border_weights = borders.states, borders.norms, borders.weights
    row_tokens, row_probs, rank_prior, max_run = logits.tokens, logits.probs, logits.rank_prior, logits.max_run
    pair_keys, pair_tokens, pair_probs, use_pairs = (
        logits.pairs.keys,
        logits.pairs.tokens,
        logits.pairs.probs,
        logits.pairs.use,
    )
    dynamic, alpha, warp = edges.dynamic, edges.alpha, edges.warp
    token_values, pair_values, retrieval_values = edges.token_rows, edges.pair_rows, edges.retrieval
    tokens, parents, scores = tree.tokens, tree.parents, tree.scores
    first_child, next_sibling, depth = tree.first_child, tree.next_sibling, tree.depth
    path_score, logits_run, expanded, pair_slot = fused.path_score, fused.logits_run, fused.expanded, fused.pair_slot
    retrieval_scores, retrieval_nodes, retrieval_payloads = (
        retrieval_heap.scores,
        retrieval_heap.first,
        retrieval_heap.second,
    )
    logits_scores, logits_parents, logits_ranks = logits_heap.scores, logits_heap.first, logits_heap.second
    vocab, k = row_tokens.shape[0], row_tokens.shape[1]
    n_retrieval_rows = retrieval_values.shape[0]
    n_ranks = min(k, rank_prior.shape[0])

    n_retrieval = 0  # entries in each heap
    for j in range(n_borders):
        c = nodes[border_states[j], FIRST_CHILD]
        while c >= 0:
            value, cell = _retrieval_cell(nodes, c, border_weights[j], border_norms[j], dynamic, retrieval_values)
            n_retrieval = heap_push_arrays(
                retrieval_scores, retrieval_nodes, retrieval_payloads, n_retrieval, value, c, pack_parent_cell(0, cell)
            )
            c = nodes[c, NEXT_SIBLING]
    path_score[0] = 1.0
    logits_run[0] = 0
    expanded[0] = 0
    n_logits = 0
    retrieved = 0
    i = 0  # the node added or reached last: its rank-0 logits candidate is queued next
    while True:
        # queue node i's rank-0 adjacency candidate (once per node, within the run cap)
        if not expanded[i] and logits_run[i] < max_run:
            expanded[i] = 1
            token = tokens[i]
            if 0 <= token < vocab:
                pair_slot[i] = -1
                if use_pairs:
                    prev = root_prev if i == 0 else tokens[parents[i]]
                    pair_slot[i] = pair_row(pair_keys, prev, token, vocab)
                if _candidate(row_tokens, pair_tokens, pair_slot, tokens, i, 0) >= 0:
                    edge = _logits_edge(
                        dynamic,
                        rank_prior,
                        row_probs,
                        pair_probs,
                        token_values,
                        pair_values,
                        alpha,
                        pair_slot,
                        tokens,
                        i,
                        0,
                        warp,
                    )
                    n_logits = heap_push_arrays(
                        logits_scores, logits_parents, logits_ranks, n_logits, path_score[i] * edge, i, 0
                    )
        if size >= budget:
            break
        use_retrieval = n_retrieval > 0 and retrieved < retrieval_limit - 1
        if use_retrieval and n_logits > 0 and not retrieval_first:
            use_retrieval = retrieval_scores[0] >= logits_scores[0]
        if use_retrieval:
            score, c, packed, n_retrieval = heap_pop_arrays(
                retrieval_scores, retrieval_nodes, retrieval_payloads, n_retrieval
            )
            parent, cell = unpack_parent_cell(packed)
            token = nodes[c, TOKEN]
            i = tree_find_arrays(tokens, first_child, next_sibling, parent, token)
            if i < 0:
                size = tree_add_arrays(
                    tokens, parents, scores, first_child, next_sibling, depth, size, parent, token, score
                )
                i = size - 1
                path_score[i] = score
                expanded[i] = 0
                retrieved += 1
                cells[i] = cell  # rows 0 .. R - 1: retrieval
            elif score > scores[i]:
                scores[i] = score
                path_score[i] = max(path_score[i], score)
            logits_run[i] = 0
            parent_freq = nodes[c, FREQ]
            g = nodes[c, FIRST_CHILD]
            while g >= 0:
                value, cell = _retrieval_cell(nodes, g, score, parent_freq, dynamic, retrieval_values)
                n_retrieval = heap_push_arrays(
                    retrieval_scores,
                    retrieval_nodes,
                    retrieval_payloads,
                    n_retrieval,
                    value,
                    g,
                    pack_parent_cell(i, cell),
                )
                g = nodes[g, NEXT_SIBLING]
        elif n_logits > 0:
            score, parent, rank, n_logits = heap_pop_arrays(logits_scores, logits_parents, logits_ranks, n_logits)
            token = _candidate(row_tokens, pair_tokens, pair_slot, tokens, parent, rank)
            if rank + 1 < n_ranks and _candidate(row_tokens, pair_tokens, pair_slot, tokens, parent, rank + 1) >= 0:
                edge = _logits_edge(
                    dynamic,
                    rank_prior,
                    row_probs,
                    pair_probs,
                    token_values,
                    pair_values,
                    alpha,
                    pair_slot,
                    tokens,
                    parent,
                    rank + 1,
                    warp,
                )
                if dynamic and edge * path_score[parent] > score:
                    edge = score / path_score[parent]
                n_logits = heap_push_arrays(
                    logits_scores, logits_parents, logits_ranks, n_logits, path_score[parent] * edge, parent, rank + 1
                )
            i = tree_find_arrays(tokens, first_child, next_sibling, parent, token)
            if i < 0:
                size = tree_add_arrays(
                    tokens, parents, scores, first_child, next_sibling, depth, size, parent, token, score
                )
                i = size - 1
                path_score[i] = score
                logits_run[i] = logits_run[parent] + 1
                expanded[i] = 0
                if dynamic:
                    cells[i] = _logits_cell(
                        n_retrieval_rows, k, row_probs, pair_probs, pair_slot, tokens, parent, rank, warp
                    )
                else:
                    cells[i] = -1
            elif score > scores[i]:
                scores[i] = score
        else:
            break
    return size


@njit(cache=True)
def grow_from_borders(automaton_nodes, borders, n_borders, min_cond, max_out_depth, tree, size, limit, heap):
    """Best-first union of the automaton subtrees hanging below ``borders.states[:n_borders]``.

    A child c of border j scores weights[j] * freq[c] / norms[j] (the estimated probability
    that the context continues with c); deeper nodes multiply by freq[g] / freq[parent].
    Children whose conditional probability is below ``min_cond`` are not drafted. Returns
    (size, expected accepted tokens = sum of the scores of the nodes added). Heap payload:
    (automaton node, tree parent). Not merged with :func:`grow_fused`: see the note there.
    """
    nodes = automaton_nodes
    border_states, border_norms, border_weights = borders.states, borders.norms, borders.weights
    tokens, parents, scores = tree.tokens, tree.parents, tree.scores
    first_child, next_sibling, depth = tree.first_child, tree.next_sibling, tree.depth
    heap_scores, heap_nodes, heap_parents = heap.scores, heap.first, heap.second
    n = 0
    for j in range(n_borders):
        norm = border_norms[j]
        weight = border_weights[j]
        c = nodes[border_states[j], FIRST_CHILD]
        while c >= 0:
            cond = nodes[c, FREQ] / norm
            if cond >= min_cond:
                n = heap_push_arrays(heap_scores, heap_nodes, heap_parents, n, weight * cond, c, 0)
            c = nodes[c, NEXT_SIBLING]
    total = 0.0
    while n > 0 and size < limit:
        score, c, parent, n = heap_pop_arrays(heap_scores, heap_nodes, heap_parents, n)
        token = nodes[c, TOKEN]
        i = tree_find_arrays(tokens, first_child, next_sibling, parent, token)
        if i < 0:
            size = tree_add_arrays(
                tokens, parents, scores, first_child, next_sibling, depth, size, parent, token, score
            )
            i = size - 1
            total += score
        elif score > scores[i]:
            total += score - scores[i]
            scores[i] = score
        if depth[i] < max_out_depth:
            parent_freq = nodes[c, FREQ]
            g = nodes[c, FIRST_CHILD]
            while g >= 0:
                cond = nodes[g, FREQ] / parent_freq
                if cond >= min_cond:
                    n = heap_push_arrays(heap_scores, heap_nodes, heap_parents, n, score * cond, g, i)
                g = nodes[g, NEXT_SIBLING]
    return size, total


@njit(cache=True)
def fill_template(adjacency_rows, template, budget, tree, slot_map):
    """Instantiate a static :class:`Template` (nodes in rank order, parents first) from the
    adjacency table: template node j is the template.ranks[j]-th candidate after its
    parent's token. Nodes whose token is unknown (-1) are skipped with their subtrees; the
    first ``budget`` nodes that exist are kept, so smaller budgets truncate the template by
    rank order. ``slot_map[j]``: the tree node of template node j (-1: skipped)."""
    template_parents, template_ranks, template_scores = template.parents, template.ranks, template.scores
    tokens, parents, scores = tree.tokens, tree.parents, tree.scores
    first_child, next_sibling, depth = tree.first_child, tree.next_sibling, tree.depth
    vocab = adjacency_rows.shape[0]
    size = 1
    slot_map[0] = 0
    for j in range(1, template_parents.shape[0]):
        slot_map[j] = -1
        if size >= budget:
            continue
        parent = slot_map[template_parents[j]]
        if parent < 0:
            continue
        parent_token = tokens[parent]
        if parent_token < 0 or parent_token >= vocab:
            continue
        token = adjacency_rows[parent_token, template_ranks[j]]
        if token < 0 or tree_find_arrays(tokens, first_child, next_sibling, parent, token) >= 0:
            continue
        size = tree_add_arrays(
            tokens, parents, scores, first_child, next_sibling, depth, size, parent, token, template_scores[j]
        )
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
    heap = [(-prior[r], 0, r) for r in range(len(prior))]  # (-score, parent node, rank)
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
    return Template(np.array(parents, np.int32), np.array(ranks, np.int32), np.array(scores, np.float32))


def new_heap(capacity: int) -> Heap:
    return Heap(np.empty(capacity, np.float64), np.empty(capacity, np.int64), np.empty(capacity, np.int64))


class TreeScratch:
    """A batch's output rows and scratch as the kernels' argument groups, allocated once per
    propose call: ``buffers`` (:class:`TreeBuffers`, [batch, width] rows), ``heap``
    (:class:`Heap` of ``heap`` entries) and, with ``fused``, RACER's second heap and per-node
    :class:`FusedNodes`.

    ``workers`` > 1: one set of per-tree scratch (trie links, heaps, fused nodes) per worker
    thread, all over the same output rows; :meth:`worker` gives worker j's groups (worker 0's
    are ``buffers``, ``heap``, ``second_heap``, ``fused``). Each worker grows its own rows."""

    __slots__ = ("buffers", "heap", "second_heap", "fused", "_workers")

    def __init__(self, batch: int, width: int, heap: int, fused: bool = False, workers: int = 1):
        tokens = np.empty((batch, width), np.int32)
        parents = np.empty((batch, width), np.int32)
        scores = np.empty((batch, width), np.float32)
        sizes = np.empty(batch, np.int32)
        self._workers = []
        for _ in range(max(1, int(workers))):
            buffers = TreeBuffers(
                tokens=tokens,
                parents=parents,
                scores=scores,
                sizes=sizes,
                first_child=np.empty(width, np.int32),
                next_sibling=np.empty(width, np.int32),
                depth=np.empty(width, np.int32),
            )
            nodes = (
                FusedNodes(
                    path_score=np.empty(width, np.float64),
                    logits_run=np.empty(width, np.int32),
                    expanded=np.empty(width, np.uint8),
                    pair_slot=np.empty(width, np.int64),
                )
                if fused
                else None
            )
            self._workers.append((buffers, new_heap(heap), new_heap(heap) if fused else None, nodes))
        self.buffers, self.heap, self.second_heap, self.fused = self._workers[0]

    def worker(self, j: int):
        """Worker j's (buffers, heap, second_heap, fused): its own scratch, the shared rows."""
        return self._workers[j]

    def trees(self, node_data: np.ndarray | None = None):
        """The batch as DraftTree objects: views into the rows (and the [batch, width]
        ``node_data`` rows, when given), no copies.

        The rows already have the tree's dtypes and are valid by construction (the growers
        keep parents before children and siblings distinct; tests validate them), so the
        objects are made without DraftTree.__init__'s coercions (:meth:`DraftTree.view`).
        """
        view = DraftTree.view
        b = self.buffers
        tok, par, sc = b.tokens, b.parents, b.scores
        if node_data is None:
            return [view(tok[i, :n], par[i, :n], sc[i, :n]) for i, n in enumerate(b.sizes.tolist())]
        return [view(tok[i, :n], par[i, :n], sc[i, :n], node_data[i, :n]) for i, n in enumerate(b.sizes.tolist())]
