"""Token Recycling (arXiv 2408.08696): draft from the target's own recycled top-k.

State: one adjacency table [vocab, k] shared by all requests (:mod:`.adjacency`), seeded
from the prefill top-k and overwritten with the target's top-k at every verified tree node
(rejected nodes too); per request only the last committed token (the next root).

Each step instantiates a static tree template over the table: template node j is the
``rank[j]``-th candidate after its parent's token. The template is ours: the
``template_nodes`` most valuable nodes (default 80, plus the root; depth <= 6) of the
k-ary tree in which a rank-r child is accepted with probability prior[r] given its parent
(prior 0.5, 0.15, 0.08, ... decaying with rank); with the defaults its levels hold
8, 23, 28, 14, 6, 1 nodes. Nodes are stored in value order, so a smaller budget keeps
the best prefix of the template. Also RACER's logits-only ablation.

``tree="dynamic"``: instead of the template, the tree grows best-first over the table
(:mod:`.dynamic_tree`): a candidate's edge value is the calibrated probability the target
gave it when its row was written (:mod:`.calibration`), so confident rows grow deep
chains and uncertain ones stay shallow; depth cap ``dynamic_depth``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, ClassVar, cast

import numpy as np
from numba import njit

from .adjacency import DEFAULT_RANK_PRIOR, AdjacencyTable
from .automaton_drafter import as_token_array, check_budgets
from .base import Drafter
from .calibration import LengthCalibration, expected_lengths
from .dynamic_tree import NO_PAIRS, Calibration, CandidateGraph, DynamicScratch, build_dynamic_batch
from .errors import ConfigError
from .feedback import Feedback
from .options import Option, resolve_options
from .threads import THREADS_OPTION, DraftThreads, resolve_threads, split_rows
from .tree_build import Template, TreeScratch, best_first_template, fill_template, tree_init, tree_rows

__all__ = ["TokenRecyclingDrafter"]

#: fewest requests per worker thread (below, handing rows to a thread costs more than it
#: saves): static templates are cheap per request, dynamic trees and observe less so
STATIC_MIN_ROWS = 64
DYNAMIC_MIN_ROWS = 16
OBSERVE_MIN_ROWS = 32


@njit(cache=True, nogil=True)
def _propose(adjacency_rows, roots, budgets, template, buffers, slot_map, first, last):
    """Row i of the TreeBuffers gets the template instantiated below roots[i], for i in
    [first, last) (one worker's rows; ``slot_map`` is that worker's scratch)."""
    for i in range(first, last):
        tree = tree_rows(buffers, i)
        size = tree_init(tree, roots[i])
        if budgets[i] > 1:
            size = fill_template(adjacency_rows, template, budgets[i], tree, slot_map)
        buffers.sizes[i] = size


class TokenRecyclingDrafter(Drafter):
    name = "token-recycling"
    uses_target_topk = True
    DEFAULT_BUDGET: ClassVar[int] = 81
    OPTIONS: ClassVar[tuple[Option, ...]] = (
        Option("topk", int, 8, "adjacency width: target top-k ids kept per token", 1, 32),
        Option("template_nodes", int, 80, "draft nodes of the static template (root excluded)", 1, 1023),
        Option("template_depth", int, 6, "depth of the static template", 1, 64),
        Option(
            "tree",
            str,
            "static",
            "'static' (the template) or 'dynamic' (best-first growth on the target's "
            "calibrated top-k probabilities; see docs/dynamic_trees.md)",
            choices=("static", "dynamic"),
        ),
        Option("dynamic_depth", int, 16, "depth cap of dynamic trees", 1, 64),
        THREADS_OPTION,
    )

    def __init__(self, vocab_size: int, **options: Any):
        o = resolve_options(self.OPTIONS, options, self.name)
        super().__init__(vocab_size)
        self.threads = DraftThreads(resolve_threads(o.get("draft_threads", 0)))
        self.tree = tree = o["tree"]
        self.dynamic_depth = o["dynamic_depth"]
        self.uses_topk_probs = tree == "dynamic"
        self.length_calibration = LengthCalibration()
        self.topk = o["topk"]
        self.adjacency = AdjacencyTable(self.vocab_size, self.topk, probs=tree == "dynamic")
        prior = list(DEFAULT_RANK_PRIOR[: self.topk]) + [DEFAULT_RANK_PRIOR[-1]] * max(0, self.topk - 8)
        self.t_parent, self.t_rank, self.t_score = best_first_template(prior, o["template_nodes"], o["template_depth"])
        self._root: dict = {}

    def start(self, rid, context_ids, context_topk=None):
        ids = as_token_array(context_ids, self.vocab_size, "context_ids")
        if ids.shape[0] == 0:
            raise ConfigError("context_ids must hold at least one token (the root of the next tree)")
        if context_topk is not None:
            self.adjacency.seed(ids, context_topk)
        self._root[rid] = int(ids[-1])

    def propose(self, rids, budgets):
        try:
            roots = np.fromiter((self._root[r] for r in rids), np.int32, len(rids))
        except KeyError as e:
            raise ConfigError(f"{self.name}: unknown request id {e.args[0]!r}: call start() first") from None
        b = check_budgets(budgets, len(rids))
        if self.tree == "dynamic":
            return self._propose_dynamic(roots, b)
        width = int(min(b.max(), self.t_parent.shape[0])) if len(rids) else 1
        ranges = split_rows(b, self.threads.workers(len(rids), STATIC_MIN_ROWS))
        s = TreeScratch(len(rids), width, 1, workers=len(ranges))
        template = Template(self.t_parent, self.t_rank, self.t_score)

        def rows(j: int, first: int, last: int) -> None:
            slot_map = np.empty(self.t_parent.shape[0], np.int64)
            _propose(self.adjacency.rows, roots, b, template, s.worker(j)[0], slot_map, first, last)

        self.threads.run([partial(rows, j, lo, hi) for j, (lo, hi) in enumerate(ranges)])
        return s.trees()

    def _propose_dynamic(self, roots, b):
        width = int(b.max()) if roots.shape[0] else 1
        ranges = split_rows(b, self.threads.workers(roots.shape[0], DYNAMIC_MIN_ROWS))
        d = DynamicScratch(roots.shape[0], width, workers=len(ranges))
        adj = self.adjacency
        graph = CandidateGraph(tokens=adj.rows, values=adj.probs, keys=adj.rows)  # keys: the candidates' tokens
        args = (
            graph,
            NO_PAIRS,
            Calibration(adj.calibration.table(), True),
            roots,
            roots.astype(np.int64),
            np.full(roots.shape[0], -1, np.int64),
            b,
            np.ones(roots.shape[0]),
            self.dynamic_depth,
        )

        kernel = cast(Callable[..., None], build_dynamic_batch)

        def rows(j: int, first: int, last: int) -> None:
            kernel(*args, *d.worker(j), first, last)

        self.threads.run([partial(rows, j, lo, hi) for j, (lo, hi) in enumerate(ranges)])
        return d.trees()

    def length_ratios(self, rids) -> np.ndarray:
        return np.array([self.length_calibration.ratio(r) for r in rids])

    def calibration_report(self) -> dict:
        return {"token_rows": self.adjacency.calibration.report(), "length": self.length_calibration.report()}

    def observe_batch(self, feedback: Feedback) -> None:
        ends = feedback.accepted_offsets[1:]
        for i, rid in enumerate(feedback.rids):
            if rid not in self._root:
                raise ConfigError(f"{self.name}: unknown request id {rid!r}: call start() first")
            if ends[i] > feedback.accepted_offsets[i]:
                last = int(feedback.accepted[ends[i] - 1])
                if not 0 <= last < self.vocab_size:
                    raise ConfigError(
                        f"accepted token {last} outside [0, {self.vocab_size}): "
                        f"vocabulary mismatch between drafter and target"
                    )
                self._root[rid] = last
        # the shared table by row ownership (see .threads): identical at every thread count
        tasks, merge = self.adjacency.feedback_tasks(feedback, self.threads.workers(len(feedback), OBSERVE_MIN_ROWS))
        self.threads.run(tasks)
        if merge is not None:
            merge()
        self.length_calibration.update(feedback.rids, expected_lengths(feedback.trees), feedback.accepted_counts - 1)

    def finish(self, rid):
        self._root.pop(rid, None)
        self.length_calibration.forget(rid)

    def active_requests(self) -> int:
        return len(self._root)

    def request_nbytes(self, rid) -> int:
        return 8  # the next root token

    def global_nbytes(self) -> int:
        return self.adjacency.nbytes() + self.t_parent.nbytes * 3
