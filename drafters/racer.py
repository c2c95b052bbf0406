"""RACER: retrieval-augmented contextual rapid speculative decoding (arXiv 2604.14885).

Two model-free sources fused into one draft tree per step:

* Retrieval: the request's n-gram automaton (:mod:`.ngram_automaton`, n = ``ngram``) fed
  with the prompt at ``start`` and the committed tokens at every ``observe``. The failure
  chain of the active state gives every context suffix that occurred before ("borders",
  matched length >= ``min_match``); their subtrees are the continuations seen after them.
  A continuation node c below border b scores freq(c) / (earlier occurrences of b +
  ``smoothing``): the estimated probability that the context goes on with c's path.
  Optionally a bounded global automaton of finished requests' outputs adds borders too.
* Logit cues: one adjacency table [vocab, k] shared by all requests (:mod:`.adjacency`),
  seeded from the prefill top-k and overwritten from the target's top-k at every verified
  tree node (rejected ones too).

Fusion (:func:`.tree_build.grow_fused`): retrieved subtrees and a logits tree grown
best-first over the adjacency table (child score = parent score x rank prior, so breadth
decays with depth), merged by trie union (siblings stay distinct; a shared node keeps the
max score). The logits tree also continues retrieved paths. ``fusion="retrieval-first"``
is the paper's order (retrieval fills up to ``retrieval_share`` of the budget, the logits
tree the rest); the default ``"score"`` lets both frontiers compete node by node on their
estimated acceptance probability. With ``adaptive_prior`` the rank priors are the observed
hit rates of recycled rank-r candidates (counted at every verified node), shrunk towards
the defaults, so the logits tree's depth/breadth trade-off calibrates itself to the target.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .adjacency import AdjacencyTable
from .automaton_drafter import AutomatonDrafter, as_token_array, check_budgets
from .errors import ConfigError
from .ngram_automaton import (DEPTH, FAIL, FIRST_CHILD, FREQ, O_ACTIVE, O_LAST, O_ROOT, active_tail,
                              match_state)
from .tree_build import TreeScratch, grow_fused, tree_init

__all__ = ["RacerDrafter", "DEFAULT_RANK_PRIOR"]

#: P(rank-r adjacency candidate is the target's next token | its parent was): the logits tree's
#: node values; a rough fit of top-k acceptance of recycled logits, decaying with rank.
DEFAULT_RANK_PRIOR = (0.5, 0.15, 0.08, 0.05, 0.04, 0.03, 0.025, 0.02)

_HEAP = 4096
FUSIONS = ("score", "retrieval-first")
#: trials' worth of weight the default priors keep against the observed rank hit rates
PRIOR_PSEUDO_COUNT = 200.0


@njit(cache=True)
def _collect_borders(nodes, root, v, min_match, discount, norm_add, weight, borders, norms, weights, nb):
    """Append the states on v's failure chain that matched >= min_match tokens and have seen
    continuations. ``discount`` removes the current occurrence from the count (per-request
    automaton: the context itself is a suffix with no continuation yet)."""
    while v != root:
        if nodes[v, DEPTH] >= min_match and nodes[v, FIRST_CHILD] >= 0:
            z = nodes[v, FREQ] - discount
            if z > 0 and nb < borders.shape[0]:
                borders[nb] = v
                norms[nb] = z + norm_add
                weights[nb] = weight
                nb += 1
        v = nodes[v, FAIL]
    return nb


@njit(cache=True)
def _propose(nodes, table, owners, slots, budgets, gslot, min_match, smoothing, global_weight,
             retrieval_share, retrieval_first, adj, prior, logits_depth,
             tok, par, sc, sizes, fc, ns, dep, lsc, lrun, expanded, rh, lh):
    borders = np.empty(160, np.int64)
    norms = np.empty(160, np.float64)
    weights = np.empty(160, np.float64)
    tail = np.empty(80, np.int32)
    for i in range(slots.shape[0]):
        slot = slots[i]
        budget = budgets[i]
        size = tree_init(tok[i], par[i], sc[i], fc, ns, dep, owners[slot, O_LAST])
        if budget > 1:
            nb = _collect_borders(nodes, owners[slot, O_ROOT], owners[slot, O_ACTIVE], min_match, 1,
                                  smoothing, 1.0, borders, norms, weights, 0)
            if gslot >= 0:
                d = active_tail(nodes, owners, slot, tail)
                groot = owners[gslot, O_ROOT]
                g = match_state(nodes, table, groot, tail, 0, d)
                nb = _collect_borders(nodes, groot, g, min_match, 0, smoothing, global_weight,
                                      borders, norms, weights, nb)
            limit = 1 + int(retrieval_share * (budget - 1))
            size = grow_fused(nodes, borders, norms, weights, nb, limit, retrieval_first,
                              adj, prior, logits_depth, tok[i], par[i], sc[i], fc, ns, dep, lsc, lrun,
                              expanded, size, budget, rh, lh)
        sizes[i] = size


class RacerDrafter(AutomatonDrafter):
    name = "racer"
    uses_target_topk = True

    def __init__(self, vocab_size, ngram=10, topk=8, min_match=2, max_nodes_per_request=16384,
                 fusion="score", retrieval_share=1.0, smoothing=1.0, logits_depth=6, adaptive_prior=True,
                 global_cache=False, global_cache_nodes=262144, global_weight=0.5):
        if min_match > ngram:
            raise ConfigError(f"racer: min_match ({min_match}) must lie in [1, ngram = {ngram}]")
        if fusion not in FUSIONS:
            raise ConfigError(f"racer: fusion must be one of {list(FUSIONS)}, got {fusion!r}")
        super().__init__(vocab_size, ngram=ngram, max_nodes_per_request=max_nodes_per_request,
                         global_cache=global_cache, global_cache_nodes=global_cache_nodes)
        self.topk = int(topk)
        self.adjacency = AdjacencyTable(self.vocab_size, self.topk)
        prior = np.full(self.topk, DEFAULT_RANK_PRIOR[-1], np.float64)
        known = min(self.topk, len(DEFAULT_RANK_PRIOR))
        prior[:known] = DEFAULT_RANK_PRIOR[:known]
        self.base_prior = prior
        self.adaptive_prior = bool(adaptive_prior)
        self.min_match = int(min_match)
        self.retrieval_first = fusion == "retrieval-first"
        self.retrieval_share = float(retrieval_share)
        self.smoothing = float(smoothing)
        self.logits_depth = int(logits_depth)
        self.global_weight = float(global_weight)

    @property
    def prior(self) -> np.ndarray:
        """Rank priors of the logits tree: fixed, or the observed rank hit rates."""
        if not self.adaptive_prior:
            return self.base_prior
        return self.adjacency.rank_hit_rates(self.base_prior, PRIOR_PSEUDO_COUNT)

    # ------------------------------------------------------------------ protocol
    def start(self, rid, context_ids, context_topk=None):
        super().start(rid, context_ids, context_topk)
        if context_topk is not None:
            self.adjacency.seed(as_token_array(context_ids, self.vocab_size, "context_ids"), context_topk)

    def propose(self, rids, budgets):
        slots = self.slots(rids)
        b = check_budgets(budgets, len(rids))
        width = int(b.max()) if len(rids) else 1
        s = TreeScratch(len(rids), width, _HEAP)
        _propose(self.pool.nodes, self.pool.table, self.pool.owners, slots, b, self.global_slot,
                 self.min_match, self.smoothing, self.global_weight, self.retrieval_share,
                 self.retrieval_first, self.adjacency.rows, self.prior, self.logits_depth,
                 s.tok, s.par, s.sc, s.sizes, s.fc, s.ns, s.dep, s.lsc, s.lrun, s.expanded, s.heap, s.heap2)
        return s.trees()

    def _observe_extra(self, slots, trees, target_topk):
        self.adjacency.update_from_trees(trees, target_topk)

    def global_nbytes(self) -> int:
        return super().global_nbytes() + self.adjacency.nbytes()
