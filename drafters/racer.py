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
  tree node (rejected ones too). Our refinement (``pair_rows``, on by default): a second
  shared cache keyed by the last two tokens; a node drafts from the row of (its parent's
  token, its token) when there is one, else from its token's row.

Fusion (:func:`.tree_build.grow_fused`): retrieved subtrees and a logits tree grown
best-first over the adjacency table (child score = parent score x rank prior, so breadth
decays with depth), merged by trie union (siblings stay distinct; a shared node keeps the
max score). The logits tree also continues retrieved paths. ``fusion="retrieval-first"``
is the paper's order (retrieval fills up to ``retrieval_share`` of the budget, the logits
tree the rest); the default ``"score"`` lets both frontiers compete node by node on their
estimated acceptance probability. With ``adaptive_prior`` the rank priors are the observed
hit rates of recycled rank-r candidates (counted at every verified node), shrunk towards
the defaults, so the logits tree's depth/breadth trade-off calibrates itself to the target.

Node values (``tree``): ``"dynamic"``, the default since its MAT was at least static's at 14
of 15 measured (prompt set, budget) points (docs/dynamic_trees.md), values every edge by a
calibrated acceptance estimate (the target's stored top-k probability for logits edges;
matched length and frequency ratio for retrieved ones, see :mod:`.calibration`);
``"static"`` uses the fixed rank priors and raw frequency ratios of the paper.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .adjacency import AdjacencyTable, PairAdjacency
from .automaton_drafter import AutomatonDrafter, as_token_array, check_budgets
from .calibration import (NBINS, AcceptanceCalibration, EdgeCalibration, LengthCalibration, expected_lengths,
                          score_tree_edges)
from .errors import ConfigError
from .ngram_automaton import (DEPTH, FAIL, FIRST_CHILD, FREQ, O_ACTIVE, O_LAST, O_ROOT, PARENT, TOKEN,
                              active_tail, match_state)
from .tree_build import RETRIEVAL_CLASS_NAMES, RETRIEVAL_CLASSES, TreeScratch, grow_fused, tree_init

__all__ = ["RacerDrafter", "DEFAULT_RANK_PRIOR"]

#: P(rank-r adjacency candidate is the target's next token | its parent was): the logits tree's
#: node values; a rough fit of top-k acceptance of recycled logits, decaying with rank.
DEFAULT_RANK_PRIOR = (0.5, 0.15, 0.08, 0.05, 0.04, 0.03, 0.025, 0.02)

_HEAP = 4096
_NO_CAL = np.ones((1, NBINS + 1), np.float64)
FUSIONS = ("score", "retrieval-first")
TREES = ("static", "dynamic")
#: trials' worth of weight the default priors keep against the observed rank hit rates
PRIOR_PSEUDO_COUNT = 200.0


def parse_rank_prior(text, k: int) -> np.ndarray:
    """Rank priors from "p0,p1,..." (None: the defaults): k values in (0, 1], non-increasing;
    missing ranks repeat the last value."""
    if text is None or str(text).strip() == "":
        vals = list(DEFAULT_RANK_PRIOR)
    else:
        try:
            vals = [float(x) for x in str(text).split(",")]
        except ValueError:
            vals = []
        if not vals or any(not 0.0 < v <= 1.0 for v in vals) or any(b > a for a, b in zip(vals, vals[1:])):
            raise ConfigError(f"racer: rank_prior must be comma-separated probabilities in (0, 1], "
                              f"non-increasing, e.g. '0.5,0.15,0.08'; got {text!r}")
    prior = np.full(k, vals[-1], np.float64)
    prior[: min(k, len(vals))] = vals[:k]
    return prior


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
def _token_before_root(nodes, owners, slot):
    """The committed token before the last one (the active state's string ends with both)."""
    v = owners[slot, O_ACTIVE]
    if nodes[v, DEPTH] < 2:
        return -1
    return nodes[nodes[v, PARENT], TOKEN]


@njit(cache=True)
def _tokens_before_roots(nodes, owners, slots, out):
    for b in range(slots.shape[0]):
        out[b] = _token_before_root(nodes, owners, slots[b])


@njit(cache=True)
def _propose(nodes, table, owners, slots, budgets, gslot, min_match, smoothing, global_weight,
             retrieval_share, retrieval_first, adj, pkeys, prows, use_pairs, prior, logits_depth,
             tok, par, sc, sizes, fc, ns, dep, lsc, lrun, expanded, rowsel, rh, lh, lv, ebin):
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
                              adj, pkeys, prows, use_pairs, _token_before_root(nodes, owners, slot), prior,
                              logits_depth, tok[i], par[i], sc[i], fc, ns, dep, lsc, lrun, expanded, rowsel,
                              size, budget, rh, lh, lv, ebin[i])
        sizes[i] = size


class RacerDrafter(AutomatonDrafter):
    name = "racer"
    uses_target_topk = True

    def __init__(self, vocab_size, ngram=10, topk=8, min_match=1, max_nodes_per_request=16384,
                 fusion="score", retrieval_share=1.0, smoothing=1.0, logits_depth=10, adaptive_prior=False,
                 pair_rows=65536, rank_prior=None, global_cache=False, global_cache_nodes=262144,
                 global_weight=0.5, tree="dynamic"):
        if tree not in TREES:
            raise ConfigError(f"racer: tree must be one of {list(TREES)}, got {tree!r}")
        if min_match > ngram:
            raise ConfigError(f"racer: min_match ({min_match}) must lie in [1, ngram = {ngram}]")
        if fusion not in FUSIONS:
            raise ConfigError(f"racer: fusion must be one of {list(FUSIONS)}, got {fusion!r}")
        super().__init__(vocab_size, ngram=ngram, max_nodes_per_request=max_nodes_per_request,
                         global_cache=global_cache, global_cache_nodes=global_cache_nodes)
        self.topk = int(topk)
        dyn = tree == "dynamic"
        self.adjacency = AdjacencyTable(self.vocab_size, self.topk, probs=dyn)
        self.pairs = PairAdjacency(self.vocab_size, self.topk, pair_rows, probs=dyn) if pair_rows > 0 else None
        self._no_pairs = PairAdjacency(self.vocab_size, self.topk, 1)   # placeholder arrays
        self.base_prior = parse_rank_prior(rank_prior, self.topk)
        self.adaptive_prior = bool(adaptive_prior)
        self.min_match = int(min_match)
        self.retrieval_first = fusion == "retrieval-first"
        self.retrieval_share = float(retrieval_share)
        self.smoothing = float(smoothing)
        self.logits_depth = int(logits_depth)
        self.global_weight = float(global_weight)
        self.tree = tree
        #: dynamic trees value logits candidates by the target's probabilities: ask for them
        self.uses_topk_probs = tree == "dynamic"
        self.length_calibration = LengthCalibration()
        #: prior of retrieved edges (frequency ratio bin -> the bin's mid-point), one row per
        #: match class (see tree_build.match_class)
        self.retrieval_calibration = EdgeCalibration(RETRIEVAL_CLASSES, (0.5,))
        #: edge values from acceptance: rows [0, R) retrieval by match class, R + r token
        #: rows, R + k + r pair rows (R = RETRIEVAL_CLASSES)
        self.acceptance = AcceptanceCalibration(RETRIEVAL_CLASSES + 2 * self.topk)

    def _acceptance_prior(self) -> np.ndarray:
        pairs = self.pairs if self.pairs is not None else self._no_pairs
        return np.concatenate([self.retrieval_calibration.table(), self.adjacency.calibration.table(),
                               pairs.calibration.table()])

    def edge_table(self) -> np.ndarray:
        """Edge values of dynamic trees [R + 2k, NBINS + 1]: acceptance evidence over the
        row-overwrite estimates (see :mod:`.calibration`)."""
        return self.acceptance.table(self._acceptance_prior())

    def _logits_values(self, s):
        """The dynamic-tree tuple for :func:`.tree_build.grow_fused` (``use`` false: static)."""
        pairs = self.pairs if self.pairs is not None else self._no_pairs
        if self.tree != "dynamic":
            return (False, self.adjacency.probs, pairs.probs, _NO_CAL, _NO_CAL, 1.0, s.rowsel, _NO_CAL)
        t = self.edge_table()
        k, r = self.topk, RETRIEVAL_CLASSES
        return (True, self.adjacency.probs, pairs.probs, t[r:r + k], t[r + k:], 1.0, s.rowsel, t[:r])

    def calibration_report(self) -> dict:
        """Edge calibration (token rows, pair rows) and expected vs realised accepted length."""
        k = self.topk
        names = [f"retrieval, {c}" for c in RETRIEVAL_CLASS_NAMES] + [f"token-row rank {r}" for r in range(k)] + [f"pair-row rank {r}" for r in range(k)]
        out = {"token_rows": self.adjacency.calibration.report(), "length": self.length_calibration.report(),
               "acceptance": self.acceptance.report(self._acceptance_prior(), names)}
        if self.pairs is not None:
            out["pair_rows"] = self.pairs.calibration.report()
        return out

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
            ids = as_token_array(context_ids, self.vocab_size, "context_ids")
            self.adjacency.seed(ids, context_topk)
            if self.pairs is not None:
                self.pairs.seed(ids, context_topk)

    def propose(self, rids, budgets):
        slots = self.slots(rids)
        b = check_budgets(budgets, len(rids))
        width = int(b.max()) if len(rids) else 1
        s = TreeScratch(len(rids), width, _HEAP)
        ebin = np.full((len(rids), width), -1, np.int32)
        pairs = self.pairs if self.pairs is not None else self._no_pairs
        _propose(self.pool.nodes, self.pool.table, self.pool.owners, slots, b, self.global_slot,
                 self.min_match, self.smoothing, self.global_weight, self.retrieval_share,
                 self.retrieval_first, self.adjacency.rows, pairs.keys, pairs.rows, self.pairs is not None,
                 self.prior, self.logits_depth, s.tok, s.par, s.sc, s.sizes, s.fc, s.ns, s.dep, s.lsc, s.lrun,
                 s.expanded, s.rowsel, s.heap, s.heap2, self._logits_values(s), ebin)
        trees = s.trees()
        if self.tree == "dynamic":          # which nodes were retrieved (and their bins): for observe
            for i, t in enumerate(trees):
                t.edge_bin = ebin[i, : len(t)]
        return trees

    def observe_batch(self, rids, trees, accepted, target_topk=None):
        super().observe_batch(rids, trees, accepted, target_topk)
        self.length_calibration.update(rids, expected_lengths(trees), [len(a) - 1 for a in accepted])
        if self.tree == "dynamic" and len(trees) and all(hasattr(t, "edge_bin") for t in trees):
            sizes = np.fromiter((len(t) for t in trees), np.int64, len(trees))
            off = np.zeros(len(trees) + 1, np.int64)
            np.cumsum(sizes, out=off[1:])
            alen = np.fromiter((len(a) for a in accepted), np.int64, len(accepted))
            aoff = np.zeros(len(accepted) + 1, np.int64)
            np.cumsum(alen, out=aoff[1:])
            acc = np.concatenate([np.asarray(a, np.int64) for a in accepted]) if aoff[-1] else np.zeros(0, np.int64)
            rc = self.acceptance
            score_tree_edges(np.concatenate([t.tokens for t in trees]), np.concatenate([t.parents for t in trees]),
                             np.concatenate([t.edge_bin for t in trees]), off, acc, aoff, rc.hits, rc.trials)
            rc.decay()

    def finish(self, rid):
        self.length_calibration.forget(rid)
        super().finish(rid)

    def _observe_extra(self, slots, trees, target_topk):
        # runs before the accepted tokens are fed: the automaton still ends at each tree's root
        self.adjacency.update_from_trees(trees, target_topk)
        if self.pairs is not None and target_topk is not None:
            before = np.empty(slots.shape[0], np.int64)
            _tokens_before_roots(self.pool.nodes, self.pool.owners, slots, before)
            self.pairs.update_from_trees(trees, target_topk, before)

    def global_nbytes(self) -> int:
        pairs = 0 if self.pairs is None else self.pairs.nbytes()
        return super().global_nbytes() + self.adjacency.nbytes() + pairs
