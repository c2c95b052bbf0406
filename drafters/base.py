"""The drafter protocol every algorithm implements and every engine adapter drives.

Per request the engine calls, in order:

    start(rid, context_ids, context_topk=None)   request admitted (after prefill)
    propose(rids, budgets) -> list[DraftTree]     once per engine step, batched
    observe(rid, tree, accepted, target_topk)     after verification of that tree
    finish(rid)                                   finished, aborted or evicted

``context_ids`` are all committed tokens of the request; the last one is the root
of the next tree (committed, KV not yet computed). ``context_topk`` optionally
gives the target's top-k next-token ids after each context position but the last
([len(context_ids) - 1, k]): the prefill logits, for drafters that seed from them.

``accepted`` in ``observe`` is the tokens committed this step: the tokens of the
accepted tree nodes below the root, then the bonus token (so its last token is the
next root). ``target_topk[i]`` is the target's top-k next-token ids at tree node i
([n, k], best first), or None where the engine does not provide it. Drafters with
``uses_topk_probs`` true also accept a tuple (ids [n, k], probs [n, k] float32): the
target's probabilities of those ids (engines that can send them do; the same form is
used for ``context_topk``).

Drafters hold per-request state only between ``start`` and ``finish``; every cache is
bounded. No engine imports here.

Drafters that need the target model itself (early-exit self-speculation) set
``needs_runner`` to the name of a narrow interface the engine adapter implements
(``"early_exit"``: :class:`specplug.drafters.early_exit.EarlyExitRunner`). The engine
builds one runner per batch and calls ``drafter.bind(runner)`` before any ``start`` of
that batch; an engine without such a runner must refuse the drafter with a ConfigError.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Hashable, Sequence

import numpy as np

from .errors import ConfigError
from .tree import DraftTree

RequestId = Hashable

MIN_BUDGET = 1
MAX_BUDGET = 1024


def check_budget(budget: int) -> int:
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or not (
            MIN_BUDGET <= int(budget) <= MAX_BUDGET):
        raise ConfigError(f"budget must be an integer in {MIN_BUDGET}..{MAX_BUDGET} "
                          f"(tree nodes including the root), got {budget!r}")
    return int(budget)


class Drafter(ABC):
    """Base class of all specplug drafters."""

    #: registered algorithm name (lower case, dashes)
    name: ClassVar[str] = ""
    #: True when the drafter learns from ``target_topk`` (engines then compute it)
    uses_target_topk: ClassVar[bool] = False
    #: True when the drafter wants the top-k probabilities too: (ids, probs) tuples
    uses_topk_probs: bool = False
    #: top-k width the drafter wants in ``target_topk`` / ``context_topk``
    topk: int = 8
    #: name of the model interface the engine must provide through :meth:`bind`, or None
    needs_runner: ClassVar[str | None] = None

    def __init__(self, vocab_size: int, **options: Any):
        if vocab_size <= 0:
            raise ConfigError("vocab_size must be positive")
        self.vocab_size = int(vocab_size)
        self.options = options

    def bind(self, runner: Any) -> None:
        """Receive the engine's runner (see ``needs_runner``) before ``start``; default: ignore."""

    @abstractmethod
    def start(self, rid: RequestId, context_ids: Sequence[int],
              context_topk: np.ndarray | None = None) -> None: ...

    @abstractmethod
    def propose(self, rids: Sequence[RequestId], budgets: Sequence[int]) -> list[DraftTree]: ...

    @abstractmethod
    def observe(self, rid: RequestId, tree: DraftTree, accepted: Sequence[int],
                target_topk: np.ndarray | None = None) -> None: ...

    @abstractmethod
    def finish(self, rid: RequestId) -> None: ...

    @abstractmethod
    def active_requests(self) -> int:
        """How many requests hold state (0 after every request finished)."""

    def observe_batch(self, rids: Sequence[RequestId], trees: Sequence[DraftTree],
                      accepted: Sequence[Sequence[int]],
                      target_topk: Sequence[np.ndarray | None] | None = None) -> None:
        """Batched observe; drafters with compiled state updates override it."""
        for i, rid in enumerate(rids):
            self.observe(rid, trees[i], accepted[i], None if target_topk is None else target_topk[i])


class ContextDrafter(Drafter):
    """A drafter whose per-request state is the committed token sequence (a growing buffer)."""

    def __init__(self, vocab_size: int, **options: Any):
        super().__init__(vocab_size, **options)
        self._ctx: dict[RequestId, np.ndarray] = {}
        self._len: dict[RequestId, int] = {}

    def start(self, rid, context_ids, context_topk=None):
        ids = np.asarray(context_ids, dtype=np.int32)
        if ids.ndim != 1 or ids.shape[0] == 0:
            raise ConfigError("context_ids must be a non-empty 1-D sequence of token ids")
        buf = np.empty(max(64, 2 * ids.shape[0]), np.int32)
        buf[: ids.shape[0]] = ids
        self._ctx[rid] = buf
        self._len[rid] = ids.shape[0]

    def context(self, rid) -> np.ndarray:
        return self._ctx[rid][: self._len[rid]]

    def observe(self, rid, tree, accepted, target_topk=None):
        acc = np.asarray(accepted, dtype=np.int32)
        buf, n = self._ctx[rid], self._len[rid]
        if n + acc.shape[0] > buf.shape[0]:
            new = np.empty(2 * (n + acc.shape[0]), np.int32)
            new[:n] = buf[:n]
            buf = self._ctx[rid] = new
        buf[n: n + acc.shape[0]] = acc
        self._len[rid] = n + acc.shape[0]

    def finish(self, rid):
        self._ctx.pop(rid, None)
        self._len.pop(rid, None)

    def active_requests(self) -> int:
        return len(self._ctx)
