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

from collections import namedtuple
from functools import partial
from typing import Any, ClassVar

import numpy as np
from numba import njit

from .adjacency import DEFAULT_RANK_PRIOR, AdjacencyTable, PairAdjacency
from .automaton_drafter import AutomatonDrafter, as_token_array, check_budgets
from .calibration import (
    NBINS,
    AcceptanceCalibration,
    EdgeCalibration,
    RegimeLengthCalibration,
    expected_lengths,
    score_tree_edges,
)
from .errors import ConfigError
from .feedback import Feedback
from .ngram_automaton import (
    DEPTH,
    FAIL,
    FIRST_CHILD,
    FREQ,
    O_ACTIVE,
    O_LAST,
    O_ROOT,
    PARENT,
    TOKEN,
    active_tail,
    match_state,
)
from .options import Option, resolve_options
from .sampling import GREEDY, SamplingParams
from .threads import THREADS_OPTION, split_rows
from .tree_build import (
    NO_WARP,
    RETRIEVAL_CLASS_NAMES,
    RETRIEVAL_CLASSES,
    Borders,
    EdgeValues,
    LogitsTable,
    PairTable,
    TreeScratch,
    grow_fused,
    tree_init,
    tree_rows,
)

__all__ = ["RacerDrafter", "DEFAULT_RANK_PRIOR"]  # the prior lives with the adjacency table

_HEAP = 4096
#: fewest requests per worker thread in propose (below, handing rows to a thread costs more)
PROPOSE_MIN_ROWS = 8
_NO_CAL = np.ones((1, NBINS + 1), np.float64)
#: most retrieval borders per tree (request and global automaton together)
_MAX_BORDERS = 160

#: The retrieval options of the kernel: the global automaton's owner slot (-1: none), the
#: shortest match, the smoothing added to border counts, the global borders' weight, the
#: budget share retrieval may fill and ``first`` (the paper's retrieval-first fusion).
RetrievalParams = namedtuple(
    "RetrievalParams", ["global_slot", "min_match", "smoothing", "global_weight", "share", "first"]
)
#: trials' worth of weight the default priors keep against the observed rank hit rates
PRIOR_PSEUDO_COUNT = 200.0


def _bin_prior(table: np.ndarray) -> np.ndarray:
    """A calibration table whose probability bins are valued at their mid-points (the
    unknown-probability column kept)."""
    out = table.copy()
    out[:, :NBINS] = (np.arange(NBINS) + 0.5) / NBINS
    return out


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
            raise ConfigError(
                f"racer: rank_prior must be comma-separated probabilities in (0, 1], "
                f"non-increasing, e.g. '0.5,0.15,0.08'; got {text!r}"
            )
    prior = np.full(k, vals[-1], np.float64)
    prior[: min(k, len(vals))] = vals[:k]
    return prior


@njit(cache=True)
def _collect_borders(nodes, root, state, min_match, discount, norm_add, weight, borders, n_borders):
    """Append to ``borders`` (holding ``n_borders``) the states on ``state``'s failure chain
    that matched >= min_match tokens and have seen continuations; returns the new count.
    ``discount`` removes the current occurrence from the count (per-request automaton: the
    context itself is a suffix with no continuation yet)."""
    v = state
    while v != root:
        if nodes[v, DEPTH] >= min_match and nodes[v, FIRST_CHILD] >= 0:
            count = nodes[v, FREQ] - discount
            if count > 0 and n_borders < borders.states.shape[0]:
                borders.states[n_borders] = v
                borders.norms[n_borders] = count + norm_add
                borders.weights[n_borders] = weight
                n_borders += 1
        v = nodes[v, FAIL]
    return n_borders


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


@njit(cache=True, nogil=True)
def _propose(
    automaton, slots, budgets, retrieval, logits, edges, buffers, fused, cells, retrieval_heap, logits_heap, first, last
):
    """Row i of the TreeBuffers (and of ``cells``, the nodes' calibration cells) gets the
    fused tree of request slot slots[i] under budgets[i], for i in [first, last) (one
    worker's rows: the automaton and tables are only read, the scratch is the worker's)."""
    nodes, table, owners = automaton.nodes, automaton.table, automaton.owners
    borders = Borders(
        np.empty(_MAX_BORDERS, np.int64), np.empty(_MAX_BORDERS, np.float64), np.empty(_MAX_BORDERS, np.float64)
    )
    tail = np.empty(80, np.int32)
    for i in range(first, last):
        slot = slots[i]
        budget = budgets[i]
        tree = tree_rows(buffers, i)
        size = tree_init(tree, owners[slot, O_LAST])
        if budget > 1:
            n_borders = _collect_borders(
                nodes,
                owners[slot, O_ROOT],
                owners[slot, O_ACTIVE],
                retrieval.min_match,
                1,
                retrieval.smoothing,
                1.0,
                borders,
                0,
            )
            if retrieval.global_slot >= 0:
                d = active_tail(nodes, owners, slot, tail)
                global_root = owners[retrieval.global_slot, O_ROOT]
                g = match_state(nodes, table, global_root, tail, 0, d)
                n_borders = _collect_borders(
                    nodes,
                    global_root,
                    g,
                    retrieval.min_match,
                    0,
                    retrieval.smoothing,
                    retrieval.global_weight,
                    borders,
                    n_borders,
                )
            limit = 1 + int(retrieval.share * (budget - 1))
            size = grow_fused(
                nodes,
                borders,
                n_borders,
                limit,
                retrieval.first,
                logits,
                edges,
                _token_before_root(nodes, owners, slot),
                tree,
                fused,
                cells[i],
                size,
                budget,
                retrieval_heap,
                logits_heap,
            )
        buffers.sizes[i] = size


class RacerDrafter(AutomatonDrafter):
    name = "racer"
    uses_target_topk = True
    DEFAULT_BUDGET: ClassVar[int] = 64
    OPTIONS: ClassVar[tuple[Option, ...]] = (
        Option("ngram", int, 10, "n-gram length of the retrieval automaton (its depth)", 1, 64),
        Option(
            "topk",
            int,
            8,
            "adjacency width: target top-k ids kept per token (one table shared by all requests: vocab x topk int32)",
            1,
            32,
        ),
        Option(
            "min_match",
            int,
            1,
            "shortest matched context suffix (root included) used for retrieval "
            "(1: the root token's own continuations count too)",
            1,
            64,
        ),
        Option(
            "max_nodes_per_request",
            int,
            16384,
            "automaton node cap per request (40 B per node); the "
            "oldest n-grams are evicted beyond it; must be >= 64 * ngram",
            64,
            1 << 24,
        ),
        Option(
            "fusion",
            str,
            "score",
            "how retrieval and logits share the budget: 'score' (both frontiers "
            "compete on estimated acceptance) or 'retrieval-first' (the paper's order)",
            choices=("score", "retrieval-first"),
        ),
        Option(
            "retrieval_share",
            float,
            1.0,
            "largest fraction of the budget retrieved nodes may fill (0 = logits tree only)",
            0.0,
            1.0,
        ),
        Option(
            "smoothing",
            float,
            1.0,
            "pseudo-count added to a match's occurrences when scoring its continuations (penalises matches seen once)",
            0.0,
            1000.0,
        ),
        Option("logits_depth", int, 10, "most logits-tree nodes in a row on a path (0 = retrieval only)", 0, 64),
        Option(
            "rank_prior",
            str,
            ",".join(map(str, DEFAULT_RANK_PRIOR)),
            "P(rank-r recycled candidate is "
            "accepted | its parent was), comma-separated, non-increasing: the logits tree's node values",
        ),
        Option(
            "adaptive_prior",
            bool,
            False,
            "rank priors of the logits tree from the observed hit rates of "
            "recycled top-k candidates (default: fixed priors 0.5, 0.15, 0.08, ...)",
        ),
        Option(
            "pair_rows",
            int,
            65536,
            "rows of the shared top-k cache keyed by the last two tokens, drafted "
            "from before the token-keyed row (0 = off; rounded up to a power of two; 40 B per row)",
            0,
            1 << 24,
        ),
        Option("global_cache", bool, False, "also retrieve from a bounded automaton of finished requests' outputs"),
        Option("global_cache_nodes", int, 262144, "node cap of the global automaton (40 B per node)", 64, 1 << 26),
        Option("global_weight", float, 0.5, "score multiplier of global-cache continuations", 0.0, 1.0),
        Option(
            "tree",
            str,
            "dynamic",
            "tree shape: 'dynamic' (node values = calibrated acceptance estimates: "
            "the target's top-k probabilities stored with the recycled rows, retrieval by matched length and "
            "frequency; the shape follows the context; MAT at least static's at 14 of 15 measured points, see "
            "docs/dynamic_trees.md) or 'static' (fixed rank priors and raw frequency ratios, as in the paper)",
            choices=("static", "dynamic"),
        ),
        THREADS_OPTION,
    )

    def __init__(self, vocab_size: int, **options: Any):
        o = resolve_options(self.OPTIONS, options, self.name)
        if o["min_match"] > o["ngram"]:
            raise ConfigError(f"racer: min_match ({o['min_match']}) must lie in [1, ngram = {o['ngram']}]")
        super().__init__(
            vocab_size,
            ngram=o["ngram"],
            max_nodes_per_request=o["max_nodes_per_request"],
            global_cache=o["global_cache"],
            global_cache_nodes=o["global_cache_nodes"],
            draft_threads=o["draft_threads"],
        )
        self.topk = o["topk"]
        tree = o["tree"]
        dyn = tree == "dynamic"
        pair_rows = o["pair_rows"]
        self.adjacency = AdjacencyTable(self.vocab_size, self.topk, probs=dyn)
        self.pairs = PairAdjacency(self.vocab_size, self.topk, pair_rows, probs=dyn) if pair_rows > 0 else None
        self._no_pairs = PairAdjacency(self.vocab_size, self.topk, 1)  # placeholder arrays
        self.base_prior = parse_rank_prior(o["rank_prior"], self.topk)
        self.adaptive_prior = o["adaptive_prior"]
        self.min_match = o["min_match"]
        self.retrieval_first = o["fusion"] == "retrieval-first"
        self.retrieval_share = o["retrieval_share"]
        self.smoothing = o["smoothing"]
        self.logits_depth = o["logits_depth"]
        self.global_weight = o["global_weight"]
        self.tree = tree
        #: dynamic trees value logits candidates by the target's probabilities: ask for them
        self.uses_topk_probs = dyn
        self.length_calibration = RegimeLengthCalibration()
        #: sampled requests' settings (greedy ones are absent): trees and calibration follow them
        self._sampling: dict = {}
        #: prior of retrieved edges (frequency ratio bin -> the bin's mid-point), one row per
        #: match class (see tree_build.match_class)
        self.retrieval_calibration = EdgeCalibration(RETRIEVAL_CLASSES, (0.5,))
        #: edge values from acceptance: rows [0, R) retrieval by match class, R + r token
        #: rows, R + k + r pair rows (R = RETRIEVAL_CLASSES)
        self.acceptance = AcceptanceCalibration(RETRIEVAL_CLASSES + 2 * self.topk)

    def _acceptance_prior(self, regime: int = 0) -> np.ndarray:
        """Prior edge values: greedy's are the row-overwrite estimates (how often a stored
        candidate is the target's next top-1); a sampled regime's candidates are valued by
        their warped probability, so the prior of its probability bins is the bin itself."""
        pairs = self.pairs if self.pairs is not None else self._no_pairs
        rows = [self.retrieval_calibration.table(), self.adjacency.calibration.table(), pairs.calibration.table()]
        if regime:
            rows[1:] = [_bin_prior(t) for t in rows[1:]]
        return np.concatenate(rows)

    def edge_table(self, regime: int = 0) -> np.ndarray:
        """Edge values of dynamic trees [R + 2k, NBINS + 1] for a sampling regime: acceptance
        evidence over the prior (see :mod:`.calibration`)."""
        return self.acceptance.table(self._acceptance_prior(regime), regime)

    def _edge_values(self, sampling: SamplingParams = GREEDY) -> EdgeValues:
        """The edge values of :func:`.tree_build.grow_fused` (``dynamic`` false: static) for
        requests sampling with ``sampling``."""
        if self.tree != "dynamic":
            return EdgeValues(False, _NO_CAL, _NO_CAL, _NO_CAL, 1.0, NO_WARP)
        t = self.edge_table(sampling.regime)
        k, r = self.topk, RETRIEVAL_CLASSES
        warp = NO_WARP
        if not sampling.greedy:
            warp = np.array([1.0 / sampling.temperature, sampling.top_k, sampling.top_p], np.float64)
        return EdgeValues(True, token_rows=t[r : r + k], pair_rows=t[r + k :], retrieval=t[:r], alpha=1.0, warp=warp)

    def _logits_table(self) -> LogitsTable:
        pairs = self.pairs if self.pairs is not None else self._no_pairs
        return LogitsTable(
            tokens=self.adjacency.rows,
            probs=self.adjacency.probs,
            pairs=PairTable(pairs.keys, pairs.rows, pairs.probs, self.pairs is not None),
            rank_prior=self.prior,
            max_run=int(self.logits_depth),
        )

    def _retrieval_params(self) -> RetrievalParams:
        return RetrievalParams(
            int(self.global_slot),
            int(self.min_match),
            float(self.smoothing),
            float(self.global_weight),
            float(self.retrieval_share),
            bool(self.retrieval_first),
        )

    def length_ratios(self, rids) -> np.ndarray:
        return np.array([self.length_calibration.ratio(r) for r in rids])

    def calibration_report(self) -> dict:
        """Edge calibration (token rows, pair rows) and expected vs realised accepted length."""
        k = self.topk
        names = (
            [f"retrieval, {c}" for c in RETRIEVAL_CLASS_NAMES]
            + [f"token-row rank {r}" for r in range(k)]
            + [f"pair-row rank {r}" for r in range(k)]
        )
        out = {
            "token_rows": self.adjacency.calibration.report(),
            "length": self.length_calibration.report(),
            "acceptance": self.acceptance.report(self._acceptance_prior, names),
        }
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

    def set_sampling(self, rid, sampling):
        if rid not in self._slot:
            raise ConfigError(f"{self.name}: unknown request id {rid!r}: call start() first")
        if sampling.greedy:
            self._sampling.pop(rid, None)
        else:
            self._sampling[rid] = sampling
        self.length_calibration.set_regime(rid, sampling.regime)

    def propose(self, rids, budgets):
        if not self._sampling:  # every request greedy
            return self._propose_rows(rids, budgets, self._edge_values())
        settings = [self._sampling.get(r, GREEDY) for r in rids]
        groups: dict[SamplingParams, list[int]] = {}
        for i, sp in enumerate(settings):
            groups.setdefault(sp, []).append(i)
        if len(groups) == 1:
            return self._propose_rows(rids, budgets, self._edge_values(settings[0]))
        b = np.asarray(budgets)
        trees: list = [None] * len(rids)
        for sp, rows in groups.items():  # a few distinct settings per batch
            for i, t in zip(rows, self._propose_rows([rids[i] for i in rows], b[rows], self._edge_values(sp))):
                trees[i] = t
        return trees

    def _propose_rows(self, rids, budgets, edges: EdgeValues):
        slots = self.slots(rids)
        b = check_budgets(budgets, len(rids))
        width = int(b.max()) if len(rids) else 1
        ranges = split_rows(b, self.threads.workers(len(rids), PROPOSE_MIN_ROWS))
        s = TreeScratch(len(rids), width, _HEAP, fused=True, workers=len(ranges))
        cells = np.full((len(rids), width), -1, np.int32)
        args = (self.pool.view(), slots, b, self._retrieval_params(), self._logits_table(), edges)

        def rows(j: int, first: int, last: int) -> None:
            buffers, heap, second_heap, fused = s.worker(j)
            _propose(*args, buffers, fused, cells, heap, second_heap, first, last)

        self.threads.run([partial(rows, j, lo, hi) for j, (lo, hi) in enumerate(ranges)])
        # dynamic trees carry each node's calibration cell (-1: none) for observe
        return s.trees(cells if self.tree == "dynamic" else None)

    def observe_batch(self, feedback: Feedback) -> None:
        super().observe_batch(feedback)
        self.length_calibration.update(feedback.rids, expected_lengths(feedback.trees), feedback.accepted_counts - 1)
        cells = feedback.node_data
        if self.tree == "dynamic" and cells is not None:
            rc = self.acceptance
            regimes = np.zeros(len(feedback.rids), np.int64)
            if self._sampling:
                regimes[:] = [self._sampling.get(r, GREEDY).regime for r in feedback.rids]
            score_tree_edges(
                feedback.tokens,
                feedback.parents,
                cells,
                feedback.node_offsets,
                feedback.accepted.astype(np.int64),
                feedback.accepted_offsets,
                regimes,
                rc.hits,
                rc.trials,
            )
            rc.decay()

    def finish(self, rid):
        self._sampling.pop(rid, None)
        self.length_calibration.forget(rid)
        super().finish(rid)

    def _observe_tasks(self, slots, feedback, parts):
        # runs before the accepted tokens are fed: the automaton still ends at each tree's root
        tasks, merge = self.adjacency.feedback_tasks(feedback, parts)
        merges = [merge] if merge is not None else []
        if self.pairs is not None and feedback.topk is not None:
            before = np.empty(slots.shape[0], np.int64)
            _tokens_before_roots(self.pool.nodes, self.pool.owners, slots, before)
            pair_tasks, pair_merge = self.pairs.feedback_tasks(feedback, before, parts)
            tasks += pair_tasks
            if pair_merge is not None:
                merges.append(pair_merge)
        return tasks, merges

    def global_nbytes(self) -> int:
        pairs = 0 if self.pairs is None else self.pairs.nbytes()
        return super().global_nbytes() + self.adjacency.nbytes() + pairs
