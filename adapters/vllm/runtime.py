"""vLLM's per-step proposer call onto :class:`specplug.drafters.session.DraftSession` (no vLLM, no torch).

vLLM's ``custom_class`` proposer gets, per step, each batch row's sampled tokens (accepted
drafts + bonus; empty for a partial prefill), committed lengths and a token table, and
returns one chain of 0..K drafts per row. The patches (:mod:`specplug.patches.vllm`) add
what that call lacks: the batch's request ids, the scheduler's finished / preempted ids
and the drafts it scheduled for verification (:meth:`VllmChains.on_schedule`), and the
target's top-k at every verified position (:meth:`VllmChains.on_topk`).

Per step :meth:`VllmChains.step` **observes** every row whose pending chain is exactly
what vLLM scheduled (any other row, e.g. drafts the scheduler trimmed, is not observed: its
committed length no longer matches and the session restarts it from vLLM's tokens), then
**proposes** through ``session.propose(..., chain=K)``: each tree cut to the chain of at most
K guesses with the largest expected accepted length, then the load-aware policy's length per
row (0 where drafting does not pay).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from specplug.drafters.base import Drafter
from specplug.drafters.budget import BudgetPolicy
from specplug.drafters.sampling import GREEDY, SamplingParams
from specplug.drafters.session import DraftSession, RequestView

from .config import VllmSettings

__all__ = ["VllmChains", "row_sampling"]


def row_sampling(input_batch: Any, rows: int, vocab_size: int) -> list[SamplingParams]:
    """Each of the first ``rows`` rows' sampling settings, from vLLM's ``InputBatch`` host
    arrays (``temperature_cpu`` 0 for greedy rows; ``top_k_cpu`` = the vocabulary size when
    off); greedy for a batch without them."""
    temps = getattr(input_batch, "temperature_cpu", None)
    if temps is None:
        return [GREEDY] * rows
    top_p, top_k = input_batch.top_p_cpu, input_batch.top_k_cpu
    out = []
    for i in range(rows):  # a few scalars per row, once per step
        t = float(temps[i])
        if t <= 0.0:
            out.append(GREEDY)
            continue
        k = int(top_k[i])
        out.append(SamplingParams(t, 0 if k <= 0 or k >= vocab_size else k, min(float(top_p[i]), 1.0)))
    return out


class VllmChains:
    """One vLLM worker's drafting: request identity, lifecycle, feedback and chains."""

    def __init__(
        self, drafter: Drafter, settings: VllmSettings, *, max_model_len: int, policy: BudgetPolicy | None = None
    ):
        self.settings = settings
        self.k = settings.k
        self.max_model_len = int(max_model_len)
        self.session = DraftSession(
            drafter,
            policy=policy,
            engine="vLLM",
            max_idle_steps=settings.max_idle_steps,
            max_requests=settings.max_requests,
        )
        self._scheduled: Mapping[Hashable, Sequence[int]] = {}
        # the target's top-k at this step's verified positions: ids [N, k], probs or None,
        # and the drafts per row (row i owns drafts_i + 1 consecutive positions)
        self._topk: tuple[np.ndarray, np.ndarray | None, np.ndarray] | None = None

    # ------------------------------------------------------------------ what the patches tell
    def on_schedule(
        self,
        finished: Iterable[Hashable],
        preempted: Iterable[Hashable] | None,
        scheduled_drafts: Mapping[Hashable, Sequence[int]],
    ) -> None:
        """The scheduler's output, at the start of a step: departures leave the session
        (a preempted request restarts from its tokens when it is resumed)."""
        for rid in finished:
            self.session.finish(rid)
        for rid in preempted or ():
            self.session.finish(rid)
        self._scheduled = scheduled_drafts
        self._topk = None

    def on_topk(self, ids: np.ndarray, probs: np.ndarray | None, num_drafts: Sequence[int]) -> None:
        """The target's top-k at this step's logits rows (batch-row order, drafts + 1 per row)."""
        self._topk = (ids, probs, np.asarray(num_drafts, np.int64))

    # ------------------------------------------------------------------ one step
    def step(
        self,
        req_ids: Sequence[Hashable],
        sampled: Sequence[Sequence[int]],
        num_tokens: np.ndarray,
        token_ids: np.ndarray,
        sampling: Sequence[SamplingParams] | None = None,
    ) -> list[list[int]]:
        """Observe this step's outcome, then the next chains: one list of 0..K ids per row
        (``sampling``: each row's sampling settings, see :func:`row_sampling`; None: greedy)."""
        b = len(sampled)
        rids = list(req_ids[:b])
        self._observe(rids, sampled)
        rows = [i for i in range(b) if sampled[i] and int(num_tokens[i]) < self.max_model_len]
        views = [
            RequestView(
                rids[i],
                int(num_tokens[i]),
                int(token_ids[i, int(num_tokens[i]) - 1]),
                lambda i=i: token_ids[i, : int(num_tokens[i])].tolist(),
                GREEDY if sampling is None else sampling[i],
            )
            for i in rows
        ]
        out: list[list[int]] = [[] for _ in range(b)]
        if views:
            step = self.session.propose(views, self.settings.tree_budget, chain=self.k)
            for i, tree in zip(rows, step.trees):
                room = self.max_model_len - int(num_tokens[i])  # vLLM would trim the rest
                out[i] = tree.tokens[1 : 1 + min(self.k, room)].tolist()
        self.session.end_step()
        return out

    def _observe(self, rids: list, sampled: Sequence[Sequence[int]]) -> None:
        rows: list[int] = []
        for i, rid in enumerate(rids):
            tree = self.session.pending(rid)
            if tree is None or not sampled[i]:
                continue
            drafts = self._scheduled.get(rid, ())
            if len(tree) - 1 == len(drafts) and tree.tokens[1:].tolist() == list(drafts):
                rows.append(i)
        if not rows:
            return
        counts = np.fromiter((len(sampled[i]) for i in rows), np.int64, len(rows))
        accepted = np.fromiter((t for i in rows for t in sampled[i]), np.int64, int(counts.sum()))
        ids, probs = self._topk_rows(rows)
        self.session.observe([rids[i] for i in rows], accepted, counts, ids, probs)

    def _topk_rows(self, rows: list[int]) -> tuple[np.ndarray | None, np.ndarray | None]:
        """[len(rows), W, k] top-k of those rows' verified positions (W: their widest chain + 1)."""
        if self._topk is None or not self.session.topk:
            return None, None
        ids, probs, drafts = self._topk
        sizes = drafts + 1
        if int(sizes.sum()) != ids.shape[0] or max(rows) >= sizes.shape[0]:
            return None, None  # not laid out as expected: no feedback this step (speed, never output)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        sel = np.asarray(rows, np.int64)
        width = int(sizes[sel].max())
        pos = starts[sel, None] + np.minimum(np.arange(width)[None, :], sizes[sel, None] - 1)
        return ids[pos], None if probs is None else probs[pos]

    # ------------------------------------------------------------------ state
    @property
    def active(self) -> int:
        return self.session.active

    def report(self) -> dict[str, Any]:
        return {"algorithm": self.settings.algorithm, "k": self.k, **self.session.stats.as_dict()}
