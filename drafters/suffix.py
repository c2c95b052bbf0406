"""Suffix decoding (SuffixDecoding / ArcticInference style), a model-free baseline.

Two suffix structures, both depth-capped suffix tries with counts (:mod:`.ngram_automaton`,
depth ``max_depth``): one per request over its prompt and output, and a bounded global
one over the outputs of finished requests. Each step, in each structure, the longest
suffix of the context that occurred before (match length m >= ``min_match``) is found by
its failure chain; the tree below it is expanded best-first by path probability (product
of count ratios), dropping children whose conditional probability is below
``min_token_prob``, with at most ``max_spec_factor * m`` draft nodes (longer matches
speculate more). The per-request and global candidates compete on their expected number
of accepted tokens (sum of node probabilities); the better tree is proposed.
"""

from __future__ import annotations

from collections import namedtuple
from functools import partial
from typing import Any, ClassVar

import numpy as np
from numba import njit

from .automaton_drafter import AutomatonDrafter, check_budgets
from .errors import ConfigError
from .ngram_automaton import DEPTH, FAIL, FIRST_CHILD, FREQ, O_ACTIVE, O_LAST, O_ROOT, active_tail, match_state
from .options import Option, resolve_options
from .threads import THREADS_OPTION, split_rows
from .tree_build import Borders, TreeRows, TreeScratch, grow_from_borders, tree_init, tree_rows

__all__ = ["SuffixDrafter"]

_HEAP = 4096
#: fewest requests per worker thread in propose (below, handing rows to a thread costs more)
PROPOSE_MIN_ROWS = 16

#: The kernel's options: the global automaton's owner slot (-1: none), the shortest match,
#: draft nodes per matched token, the conditional-probability floor of a continuation.
SuffixParams = namedtuple("SuffixParams", ["global_slot", "min_match", "spec_factor", "min_prob"])


@njit(cache=True)
def _deepest_border(nodes, root, v, min_match, discount):
    """First state on v's failure chain (longest match) that has seen continuations."""
    while v != root:
        if nodes[v, DEPTH] < min_match:
            return -1
        if nodes[v, FIRST_CHILD] >= 0 and nodes[v, FREQ] - discount > 0:
            return v
        v = nodes[v, FAIL]
    return -1


@njit(cache=True)
def _build(nodes, border, discount, budget, params, tree, heap, borders, root_token):
    """The tree below one border state (-1: the root alone): (size, expected accepted tokens)."""
    size = tree_init(tree, root_token)
    if border < 0:
        return size, 0.0
    matched = nodes[border, DEPTH]
    limit = min(budget, 1 + int(params.spec_factor * matched))
    borders.states[0] = border
    borders.norms[0] = nodes[border, FREQ] - discount
    borders.weights[0] = 1.0
    return grow_from_borders(nodes, borders, 1, params.min_prob, 1 << 20, tree, size, limit, heap)


@njit(cache=True, nogil=True)
def _propose(automaton, slots, budgets, params, buffers, spare, heap, first, last):
    """Row i of the TreeBuffers: the better (expected accepted tokens) of request slots[i]'s
    own tree and the global automaton's, the latter grown in the ``spare`` TreeRows, for i
    in [first, last) (one worker's rows and scratch)."""
    nodes, table, owners = automaton.nodes, automaton.table, automaton.owners
    borders = Borders(np.empty(1, np.int64), np.empty(1, np.float64), np.empty(1, np.float64))
    tail = np.empty(80, np.int32)
    for i in range(first, last):
        slot = slots[i]
        budget = budgets[i]
        root_token = owners[slot, O_LAST]
        tree = tree_rows(buffers, i)
        border = -1
        if budget > 1:
            border = _deepest_border(nodes, owners[slot, O_ROOT], owners[slot, O_ACTIVE], params.min_match, 1)
        size, score = _build(nodes, border, 1, budget, params, tree, heap, borders, root_token)
        if params.global_slot >= 0 and budget > 1:
            d = active_tail(nodes, owners, slot, tail)
            global_root = owners[params.global_slot, O_ROOT]
            g = match_state(nodes, table, global_root, tail, 0, d)
            global_border = _deepest_border(nodes, global_root, g, params.min_match, 0)
            if global_border >= 0:
                size2, score2 = _build(nodes, global_border, 0, budget, params, spare, heap, borders, root_token)
                if score2 > score:
                    tree.tokens[:size2] = spare.tokens[:size2]
                    tree.parents[:size2] = spare.parents[:size2]
                    tree.scores[:size2] = spare.scores[:size2]
                    size = size2
        buffers.sizes[i] = size


class SuffixDrafter(AutomatonDrafter):
    name = "suffix"
    DEFAULT_BUDGET: ClassVar[int] = 64
    OPTIONS: ClassVar[tuple[Option, ...]] = (
        Option("max_depth", int, 24, "depth of the suffix tries (longest match + continuation)", 2, 64),
        Option("max_spec_factor", float, 1.0, "draft at most max_spec_factor * match length nodes", 0.0, 64.0),
        Option("min_token_prob", float, 0.1, "drop continuations whose conditional frequency is below this", 0.0, 1.0),
        Option("min_match", int, 1, "shortest matched context suffix used", 1, 63),
        Option(
            "max_nodes_per_request",
            int,
            32768,
            "suffix-trie node cap per request (40 B per node); must be >= 64 * max_depth",
            128,
            1 << 24,
        ),
        Option("global_cache", bool, True, "also match against a bounded trie of finished requests' outputs"),
        Option("global_cache_nodes", int, 262144, "node cap of the global trie (40 B per node)", 128, 1 << 26),
        THREADS_OPTION,
    )

    def __init__(self, vocab_size: int, **options: Any):
        o = resolve_options(self.OPTIONS, options, self.name)
        max_depth, min_match = o["max_depth"], o["min_match"]
        if min_match >= max_depth:
            raise ConfigError(f"suffix: min_match ({min_match}) must lie in [1, max_depth - 1 = {max_depth - 1}]")
        super().__init__(
            vocab_size,
            ngram=max_depth,
            max_nodes_per_request=o["max_nodes_per_request"],
            global_cache=o["global_cache"],
            global_cache_nodes=o["global_cache_nodes"],
            draft_threads=o["draft_threads"],
        )
        self.max_spec_factor = o["max_spec_factor"]
        self.min_token_prob = o["min_token_prob"]
        self.min_match = min_match

    def propose(self, rids, budgets):
        slots = self.slots(rids)
        b = check_budgets(budgets, len(rids))
        width = int(b.max()) if len(rids) else 1
        ranges = split_rows(b, self.threads.workers(len(rids), PROPOSE_MIN_ROWS))
        s = TreeScratch(len(rids), width, _HEAP, workers=len(ranges))
        params = SuffixParams(
            int(self.global_slot), int(self.min_match), float(self.max_spec_factor), float(self.min_token_prob)
        )
        view = self.pool.view()

        def rows(j: int, first: int, last: int) -> None:
            buffers, heap, _, _ = s.worker(j)
            spare = TreeRows(
                np.empty(width, np.int32),
                np.empty(width, np.int32),
                np.empty(width, np.float32),
                buffers.first_child,
                buffers.next_sibling,
                buffers.depth,
            )
            _propose(view, slots, b, params, buffers, spare, heap, first, last)

        self.threads.run([partial(rows, j, lo, hi) for j, (lo, hi) in enumerate(ranges)])
        return s.trees()
