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

import numpy as np
from numba import njit

from .adjacency import AdjacencyTable
from .automaton_drafter import as_token_array, check_budgets
from .base import Drafter
from .calibration import LengthCalibration, expected_lengths
from .dynamic_tree import DynamicScratch, build_dynamic_batch
from .errors import ConfigError
from .racer import DEFAULT_RANK_PRIOR
from .tree_build import TreeScratch, best_first_template, fill_template, tree_init

__all__ = ["TokenRecyclingDrafter"]

_NO_PAIR_TOK = np.full((1, 1), -1, np.int32)
_NO_PAIR_P = np.full((1, 1), -1.0, np.float32)
_NO_PAIR_KEYS = np.full(16, -1, np.int64)


@njit(cache=True)
def _propose(adj, roots, budgets, t_parent, t_rank, t_score, tok, par, sc, sizes, fc, ns, dep, slot_map):
    for i in range(roots.shape[0]):
        size = tree_init(tok[i], par[i], sc[i], fc, ns, dep, roots[i])
        if budgets[i] > 1:
            size = fill_template(adj, t_parent, t_rank, t_score, budgets[i], tok[i], par[i], sc[i],
                                 fc, ns, dep, slot_map)
        sizes[i] = size


class TokenRecyclingDrafter(Drafter):
    name = "token-recycling"
    uses_target_topk = True

    def __init__(self, vocab_size, topk=8, template_nodes=80, template_depth=6, tree="static", dynamic_depth=16):
        if tree not in ("static", "dynamic"):
            raise ConfigError(f"{self.name}: tree must be one of ['static', 'dynamic'], got {tree!r}")
        super().__init__(vocab_size)
        self.tree = tree
        self.dynamic_depth = int(dynamic_depth)
        self.uses_topk_probs = tree == "dynamic"
        self.length_calibration = LengthCalibration()
        self.topk = int(topk)
        self.adjacency = AdjacencyTable(self.vocab_size, self.topk, probs=tree == "dynamic")
        prior = list(DEFAULT_RANK_PRIOR[: self.topk]) + [DEFAULT_RANK_PRIOR[-1]] * max(0, self.topk - 8)
        self.t_parent, self.t_rank, self.t_score = best_first_template(prior, int(template_nodes),
                                                                       int(template_depth))
        self._slot_map = np.empty(self.t_parent.shape[0], np.int64)
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
        s = TreeScratch(len(rids), width, 1)
        _propose(self.adjacency.rows, roots, b, self.t_parent, self.t_rank, self.t_score,
                 s.tok, s.par, s.sc, s.sizes, s.fc, s.ns, s.dep, self._slot_map)
        return s.trees()

    def _propose_dynamic(self, roots, b):
        width = int(b.max()) if roots.shape[0] else 1
        d = DynamicScratch(roots.shape[0], width)
        t = d.rows
        adj = self.adjacency
        build_dynamic_batch(adj.rows, adj.probs, adj.rows, _NO_PAIR_TOK, _NO_PAIR_P, _NO_PAIR_KEYS, False, roots,
                            roots.astype(np.int64), np.full(roots.shape[0], -1, np.int64), b,
                            adj.calibration.table(), True, np.ones(roots.shape[0]), self.dynamic_depth,
                            t.tok, t.par, t.sc, t.sizes, t.fc, t.ns, t.dep, d.val, d.src, d.row, t.hs, t.ha, t.hb)
        return t.trees()

    def calibration_report(self) -> dict:
        return {"token_rows": self.adjacency.calibration.report(), "length": self.length_calibration.report()}

    def observe(self, rid, tree, accepted, target_topk=None):
        self.observe_batch([rid], [tree], [accepted], None if target_topk is None else [target_topk])

    def observe_batch(self, rids, trees, accepted, target_topk=None):
        for rid, acc in zip(rids, accepted):
            if rid not in self._root:
                raise ConfigError(f"{self.name}: unknown request id {rid!r}: call start() first")
            if len(acc):
                last = int(acc[-1])
                if not 0 <= last < self.vocab_size:
                    raise ConfigError(f"accepted token {last} outside [0, {self.vocab_size}): "
                                      f"vocabulary mismatch between drafter and target")
                self._root[rid] = last
        self.adjacency.update_from_trees(trees, target_topk)
        self.length_calibration.update(rids, expected_lengths(trees), [len(a) - 1 for a in accepted])

    def finish(self, rid):
        self._root.pop(rid, None)
        self.length_calibration.forget(rid)

    def active_requests(self) -> int:
        return len(self._root)

    def request_nbytes(self, rid) -> int:
        return 8   # the next root token

    def global_nbytes(self) -> int:
        return self.adjacency.nbytes() + self.t_parent.nbytes * 3
