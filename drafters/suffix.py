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

import numpy as np
from numba import njit

from .automaton_drafter import AutomatonDrafter, check_budgets
from .errors import ConfigError
from .ngram_automaton import (DEPTH, FAIL, FIRST_CHILD, FREQ, O_ACTIVE, O_LAST, O_ROOT, active_tail,
                              match_state)
from .tree_build import TreeScratch, grow_from_borders, tree_init

__all__ = ["SuffixDrafter"]

_HEAP = 4096


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
def _build(nodes, border, discount, budget, alpha, min_prob, tok, par, sc, fc, ns, dep, hs, ha, hb,
           borders, norms, weights, root_token):
    size = tree_init(tok, par, sc, fc, ns, dep, root_token)
    if border < 0:
        return size, 0.0
    m = nodes[border, DEPTH]
    limit = min(budget, 1 + int(alpha * m))
    borders[0] = border
    norms[0] = nodes[border, FREQ] - discount
    weights[0] = 1.0
    return grow_from_borders(nodes, borders, norms, weights, 1, min_prob, 1 << 20,
                             tok, par, sc, fc, ns, dep, size, limit, hs, ha, hb)


@njit(cache=True)
def _propose(nodes, table, owners, slots, budgets, gslot, min_match, alpha, min_prob,
             tok, par, sc, sizes, tok2, par2, sc2, fc, ns, dep, hs, ha, hb):
    borders = np.empty(1, np.int64)
    norms = np.empty(1, np.float64)
    weights = np.empty(1, np.float64)
    tail = np.empty(80, np.int32)
    for i in range(slots.shape[0]):
        slot = slots[i]
        budget = budgets[i]
        root_token = owners[slot, O_LAST]
        b = -1
        if budget > 1:
            b = _deepest_border(nodes, owners[slot, O_ROOT], owners[slot, O_ACTIVE], min_match, 1)
        size, score = _build(nodes, b, 1, budget, alpha, min_prob, tok[i], par[i], sc[i], fc, ns, dep,
                             hs, ha, hb, borders, norms, weights, root_token)
        if gslot >= 0 and budget > 1:
            d = active_tail(nodes, owners, slot, tail)
            groot = owners[gslot, O_ROOT]
            g = match_state(nodes, table, groot, tail, 0, d)
            gb = _deepest_border(nodes, groot, g, min_match, 0)
            if gb >= 0:
                size2, score2 = _build(nodes, gb, 0, budget, alpha, min_prob, tok2, par2, sc2, fc, ns, dep,
                                       hs, ha, hb, borders, norms, weights, root_token)
                if score2 > score:
                    tok[i, :size2] = tok2[:size2]
                    par[i, :size2] = par2[:size2]
                    sc[i, :size2] = sc2[:size2]
                    size = size2
        sizes[i] = size


class SuffixDrafter(AutomatonDrafter):
    name = "suffix"

    def __init__(self, vocab_size, max_depth=24, max_spec_factor=1.0, min_token_prob=0.1, min_match=1,
                 max_nodes_per_request=32768, global_cache=True, global_cache_nodes=262144):
        if min_match >= max_depth:
            raise ConfigError(f"suffix: min_match ({min_match}) must lie in [1, max_depth - 1 = {max_depth - 1}]")
        super().__init__(vocab_size, ngram=max_depth, max_nodes_per_request=max_nodes_per_request,
                         global_cache=global_cache, global_cache_nodes=global_cache_nodes)
        self.max_spec_factor = float(max_spec_factor)
        self.min_token_prob = float(min_token_prob)
        self.min_match = int(min_match)

    def propose(self, rids, budgets):
        slots = self.slots(rids)
        b = check_budgets(budgets, len(rids))
        width = int(b.max()) if len(rids) else 1
        s = TreeScratch(len(rids), width, _HEAP)
        tok2 = np.empty(width, np.int32)
        par2 = np.empty(width, np.int32)
        sc2 = np.empty(width, np.float32)
        _propose(self.pool.nodes, self.pool.table, self.pool.owners, slots, b, self.global_slot,
                 self.min_match, self.max_spec_factor, self.min_token_prob,
                 s.tok, s.par, s.sc, s.sizes, tok2, par2, sc2, s.fc, s.ns, s.dep, s.hs, s.ha, s.hb)
        return s.trees()
