"""Shared request bookkeeping for drafters that retrieve from the n-gram automaton
(RACER, suffix decoding): one automaton owner per request, an optional global owner
that learns from finished requests' outputs, batched feeding of accepted tokens.

Per-request state: one owner slot (its nodes, at most ``max_nodes_per_request``) and,
when the global cache is on, the request's output tokens until ``finish`` moves them
into the global automaton (at most ``global_insert_tokens`` of them, the latest).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from functools import partial
from typing import Any

import numpy as np

from .base import Drafter, check_budget
from .errors import ConfigError
from .feedback import Feedback
from .ngram_automaton import NODE_BYTES, O_COUNT, NgramPool
from .threads import DraftThreads, resolve_threads

#: fewest requests per worker thread in observe (the table updates beside the feed)
OBSERVE_MIN_ROWS = 32

RequestId = Hashable


def as_token_array(ids, vocab_size: int, what: str) -> np.ndarray:
    arr = np.asarray(ids, dtype=np.int64)
    if arr.ndim != 1:
        raise ConfigError(f"{what} must be a 1-D sequence of token ids")
    if arr.shape[0] and (arr.min() < 0 or arr.max() >= vocab_size):
        raise ConfigError(
            f"{what} hold token ids outside [0, {vocab_size}): the drafter's vocab_size "
            f"must match the target model's vocabulary"
        )
    return arr.astype(np.int32)


def check_budgets(budgets, n: int) -> np.ndarray:
    b = np.asarray(budgets)
    if b.shape != (n,):
        raise ConfigError(f"propose needs one budget per request ({n}), got shape {b.shape}")
    if b.dtype.kind not in "iu" or n and (b.min() < 1 or b.max() > 1024):
        for x in b.tolist():  # the slow path only to build the error message
            check_budget(x)
    return b.astype(np.int64)


class AutomatonDrafter(Drafter):
    """Base class: request slots in a shared :class:`NgramPool`, global cache at finish."""

    def __init__(
        self,
        vocab_size: int,
        *,
        ngram: int,
        max_nodes_per_request: int,
        global_cache: bool,
        global_cache_nodes: int,
        global_insert_tokens: int = 4096,
        draft_threads: int = 0,
        **options: Any,
    ):
        super().__init__(vocab_size, **options)
        self.threads = DraftThreads(resolve_threads(draft_threads))
        min_cap = 64 * int(ngram)
        if max_nodes_per_request < min_cap:
            raise ConfigError(
                f"{self.name}: max_nodes_per_request must be >= 64 * ngram = {min_cap} "
                f"(the eviction keeps the context's last ngram suffixes), got {max_nodes_per_request}"
            )
        if global_cache and global_cache_nodes < min_cap:
            raise ConfigError(
                f"{self.name}: global_cache_nodes must be >= 64 * ngram = {min_cap}, got {global_cache_nodes}"
            )
        self.ngram = int(ngram)
        self.max_nodes_per_request = int(max_nodes_per_request)
        self.pool = NgramPool(self.ngram)
        self.global_cache = bool(global_cache)
        self.global_insert_tokens = int(global_insert_tokens)
        self.global_slot = self.pool.new_owner(int(global_cache_nodes)) if self.global_cache else -1
        self._slot: dict[RequestId, int] = {}
        self._outputs: dict[RequestId, list[np.ndarray]] = {}

    # ------------------------------------------------------------------ protocol
    def start(self, rid, context_ids, context_topk=None):
        ids = as_token_array(context_ids, self.vocab_size, "context_ids")
        if ids.shape[0] == 0:
            raise ConfigError("context_ids must hold at least one token (the root of the next tree)")
        if rid in self._slot:  # restarted request: drop the stale state first
            self.finish(rid)
        slot = self.pool.new_owner(self.max_nodes_per_request)
        self._slot[rid] = slot
        self.pool.feed(slot, ids)
        if self.global_cache:
            self._outputs[rid] = []

    def observe_batch(self, feedback: Feedback) -> None:
        if not len(feedback):
            return
        slots = self.slots(feedback.rids)
        flat = feedback.accepted
        if flat.shape[0] and (flat.min() < 0 or flat.max() >= self.vocab_size):
            raise ConfigError(
                f"accepted tokens outside [0, {self.vocab_size}): vocabulary mismatch between drafter and target"
            )
        tasks, merges = self._observe_tasks(slots, feedback, self.threads.workers(len(feedback), OBSERVE_MIN_ROWS))
        tokens = np.ascontiguousarray(flat, dtype=np.int32)
        # the feed is one task (serial: see .threads), run beside the drafter's table updates
        tasks.append(partial(self.pool.feed_many, slots, tokens, feedback.accepted_offsets))
        self.threads.run(tasks)
        for merge in merges:
            merge()
        if self.global_cache:
            for i, rid in enumerate(feedback.rids):
                self._outputs[rid].append(feedback.accepted_of(i).astype(np.int64))

    def finish(self, rid):
        slot = self._slot.pop(rid, None)
        if slot is None:
            return
        self.pool.free_owner(slot)
        outs = self._outputs.pop(rid, None)
        if outs:
            toks = np.concatenate(outs)[-self.global_insert_tokens :]
            self.pool.new_document(self.global_slot)
            self.pool.feed(self.global_slot, toks)

    def active_requests(self) -> int:
        return len(self._slot)

    # ------------------------------------------------------------------ helpers
    def _observe_tasks(self, slots: np.ndarray, feedback: Feedback, parts: int) -> tuple[list, list]:
        """Hook for drafters that also learn from the verified trees (RACER's adjacency):
        (tasks, merges). It runs before the accepted tokens are fed (the automaton still ends
        at each tree's root); the tasks then run beside the feed, so they must not touch the
        automaton, and the merges after all of them, in order. ``parts``: how many
        independent parts a shared table's update may be split into."""
        return [], []

    def slots(self, rids: Sequence[RequestId]) -> np.ndarray:
        try:
            return np.fromiter((self._slot[r] for r in rids), np.int64, len(rids))
        except KeyError as e:
            raise ConfigError(f"{self.name}: unknown request id {e.args[0]!r}: call start() first") from None

    def request_nbytes(self, rid) -> int:
        """Bytes of the request's own state (its automaton nodes, buffered outputs)."""
        slot = self._slot[rid]
        out = sum(p.nbytes for p in self._outputs.get(rid, ()))
        return int(self.pool.owners[slot, O_COUNT]) * NODE_BYTES + out

    def global_nbytes(self) -> int:
        """Bytes of structures shared by all requests (the node pool incl. free capacity)."""
        return self.pool.nbytes()
