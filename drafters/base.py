"""The drafter protocol every algorithm implements and every engine drives (through
:class:`specplug.drafters.session.DraftSession`, never directly).

Per request, in order:

    start(rid, context_ids, context_topk=None)   request admitted (after prefill)
    propose(rids, budgets) -> list[DraftTree]     once per engine step, batched
    observe_batch(feedback)                       after verification of those trees
    finish(rid)                                   finished, aborted or evicted

and ``set_sampling(rid, params)`` after ``start`` when the request samples (temperature,
top-k, top-p; see :class:`.sampling.SamplingParams`) and whenever its settings change.

``context_ids`` are all committed tokens of the request; the last one is the root of the
next tree (committed, KV not yet computed). ``context_topk`` optionally gives the target's
top-k next-token ids after each context position but the last (a :class:`TopK` of
``len(context_ids) - 1`` rows): the prefill logits, for drafters that seed from them.

``feedback`` (:class:`specplug.drafters.feedback.Feedback`) is one verified step for a batch:
flat accepted tokens with per-request offsets (a request's accepted tree nodes below the
root, then the bonus token) and, for drafters with ``uses_target_topk``, the target's top-k
at every verified node, flat, with probabilities where the engine can send them
(``uses_topk_probs``). ``observe(rid, tree, accepted, target_topk)`` is the one-request
form; a drafter implements one of the two, the base class derives the other.

Everything an engine, the session or the benchmarks may ask a drafter is declared here with
a default (``topk``, ``needs_runner``, :meth:`length_ratios`, :meth:`check_target`, the
reports and byte counts): nothing outside ``drafters/`` probes a drafter with ``getattr``.

Drafters hold per-request state only between ``start`` and ``finish``; every cache is
bounded. No engine imports here.

Drafters that need the target model itself (early-exit self-speculation) set
``needs_runner`` to the name of a narrow interface the engine adapter implements
(``"early_exit"``: :class:`specplug.drafters.early_exit.EarlyExitRunner`). The session binds
the engine's runner (``drafter.bind(runner)``) before any ``start``; an engine without such
a runner refuses the drafter with a ConfigError.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable, Sequence
from typing import Any, ClassVar

import numpy as np

from .errors import ConfigError
from .feedback import Feedback, TopK
from .options import Option
from .sampling import SamplingParams
from .tree import DraftTree

RequestId = Hashable

MIN_BUDGET = 1
MAX_BUDGET = 1024


def check_budget(budget: int) -> int:
    if (
        isinstance(budget, bool)
        or not isinstance(budget, (int, np.integer))
        or not (MIN_BUDGET <= int(budget) <= MAX_BUDGET)
    ):
        raise ConfigError(
            f"budget must be an integer in {MIN_BUDGET}..{MAX_BUDGET} (tree nodes including the root), got {budget!r}"
        )
    return int(budget)


class Drafter(ABC):
    """Base class of all specplug drafters."""

    #: registered algorithm name (lower case, dashes)
    name: ClassVar[str] = ""
    #: True when the drafter learns from the target's top-k (engines then compute it)
    uses_target_topk: ClassVar[bool] = False
    #: True when the drafter wants the top-k probabilities too (``TopK.probs``)
    uses_topk_probs: bool = False
    #: top-k width the drafter wants in feedback and ``context_topk``
    topk: int = 8
    #: name of the model interface the engine must provide through :meth:`bind`, or None
    needs_runner: ClassVar[str | None] = None
    #: the algorithm's options (each registered class declares them; the registry reads them)
    OPTIONS: ClassVar[tuple[Option, ...]]
    #: the tree budget when none is given
    DEFAULT_BUDGET: ClassVar[int]

    def __init__(self, vocab_size: int, **options: Any):
        if vocab_size <= 0:
            raise ConfigError("vocab_size must be positive")
        self.vocab_size = int(vocab_size)
        self.options = options

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if "observe" not in _own_methods(cls) and "observe_batch" not in _own_methods(cls):
            raise TypeError(f"{cls.__name__} must implement observe or observe_batch")

    @property
    def feedback_topk(self) -> int:
        """Top-k width engines compute for this drafter (0: it learns nothing from logits)."""
        return int(self.topk) if self.uses_target_topk else 0

    @property
    def feedback_probs(self) -> bool:
        """Whether engines send the top-k probabilities too."""
        return bool(self.uses_target_topk and self.uses_topk_probs)

    def set_sampling(self, rid: RequestId, sampling: SamplingParams) -> None:
        """How the engine samples ``rid``'s tokens (after ``start``, and whenever that changes;
        until then: greedy). Drafters that value trees by the target's distribution keep
        their calibration per sampling regime; default: ignore."""

    def bind(self, runner: Any) -> None:
        """Receive the engine's runner (see ``needs_runner``) before ``start``; default: ignore."""

    @abstractmethod
    def start(self, rid: RequestId, context_ids: Sequence[int], context_topk: TopK | None = None) -> None: ...

    @abstractmethod
    def propose(self, rids: Sequence[RequestId], budgets: Sequence[int]) -> list[DraftTree]: ...

    def observe(
        self, rid: RequestId, tree: DraftTree, accepted: Sequence[int] | np.ndarray, target_topk: TopK | None = None
    ) -> None:
        """One request's verified tree (see the module doc)."""
        self.observe_batch(Feedback.one(rid, tree, accepted, target_topk))

    def observe_batch(self, feedback: Feedback) -> None:
        """A verified step for a batch; drafters with compiled state updates override it."""
        for i, rid in enumerate(feedback.rids):
            self.observe(rid, feedback.trees[i], feedback.accepted_of(i), feedback.topk_of(i))

    @abstractmethod
    def finish(self, rid: RequestId) -> None: ...

    @abstractmethod
    def active_requests(self) -> int:
        """How many requests hold state (0 after every request finished)."""

    # ------------------------------------------------------------------ optional capabilities
    def length_ratios(self, rids: Sequence[RequestId]) -> np.ndarray | None:
        """Per request, realised / expected accepted length (the budget policy's calibration),
        or None: trust the trees' scores as they are."""
        return None

    def check_target(self, tokenizer: Any) -> None:
        """Raise ConfigError when the target's tokenizer does not match the drafter's own
        (drafters with a model of their own); default: nothing to check."""

    def bench_report(self) -> dict | None:
        """What ``specplug bench`` records of the run (DEL's exit timeline), or None."""
        return None

    def calibration_report(self) -> dict | None:
        """Calibration tables for ``specplug bench --calibration``, or None."""
        return None

    def request_nbytes(self, rid: RequestId) -> int | None:
        """Bytes of one request's own state (``specplug bench-drafters``), or None: not counted."""
        return None

    def global_nbytes(self) -> int | None:
        """Bytes of state shared by all requests, or None: not counted."""
        return None


def _own_methods(cls: type) -> set[str]:
    """Methods defined by ``cls`` or a base below :class:`Drafter`."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if klass is Drafter:
            break
        names.update(vars(klass))
    return names


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
        buf[n : n + acc.shape[0]] = acc
        self._len[rid] = n + acc.shape[0]

    def finish(self, rid):
        self._ctx.pop(rid, None)
        self._len.pop(rid, None)

    def active_requests(self) -> int:
        return len(self._ctx)
