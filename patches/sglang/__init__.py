"""SGLang 0.5.23: the version gate and every SGLang object the SGLang adapter relies on.

The adapter replaces none of SGLang's code in place: its worker is a subclass of SGLang's
``NGRAMWorker`` (overriding some methods, re-viewing its own preallocated buffers at other
widths), and its early-exit runner sets two attributes the decoder loop already honours
(``end_layer``, ``layers_to_capture``). What it depends on is therefore declared as
**pins**: :class:`Pin` objects, fingerprint-only patches that check the target exists and
its source is the code the adapter was written against, and replace nothing. They go
through :class:`specplug.patches.base.PatchSet` with the version gate of
:mod:`.version`, so an SGLang upgrade fails at worker start-up, in one place, with a
:class:`PatchError` naming the supported versions.

==================================  =================================================================
pin                                 what the adapter relies on
==================================  =================================================================
``NgramWorkerInit``                 ``NGRAMWorker.__init__``: ``SpecplugWorker.__init__`` sets the same
                                    attributes itself (no n-gram corpus)
``NgramWorkerAllocMemoryPool``      ``alloc_memory_pool``: pools, ``max_batch_size``, then the buffers
``NgramWorkerPreallocated``         ``_init_preallocated_tensors``: the buffers and the per-batch-size
                                    view lists (``widths.VIEW_LISTS``) re-viewed at other widths
``NgramWorkerPrepareVerify``        ``_prepare_for_speculative_decoding``: reads those views and
                                    ``draft_token_num`` per step, calls ``_prepare_draft_tokens``
``NgramWorkerPrepareDraftTokens``   ``_prepare_draft_tokens``: overridden (tokens [B*W], mask [B*W*W],
                                    the ``prev_*`` staging)
``NgramWorkerUpdateCorpus``         ``_update_ngram_corpus``: overridden by a no-op
``NgramWorkerForward``              ``forward_batch_generation``: wrapped (result layout; departures
                                    through ``ngram_corpus.erase_match_state``)
``NgramWorkerClearCachePool``       ``clear_cache_pool``: overridden
``NgramVerifyInputInit``            ``NgramVerifyInput.__init__``: the width fields ``relayout`` resets
``NgramVerifyInputFilter``          ``filter_batch``: reshapes kept tokens by ``draft_token_num``
``NgramVerifyInputMerge``           ``merge_batch``: concatenates them (one width per batch)
``SpecWorkerNoteFinished``          ``BaseSpecWorker.note_request_finished``: overridden
``LlamaModelForward``               ``LlamaModel.forward``: honours ``end_layer`` and
                                    ``layers_to_capture`` (early exit)
``Qwen2ModelForward``               ``Qwen2Model.forward``: the same
``ForwardBatchInitNew``             ``ForwardBatch.init_new``: the early-exit draft forward's batch
==================================  =================================================================

:func:`check_worker` checks the worker's pins (``SpecplugWorker.__init__`` calls it);
:func:`check_decoder` those of one supported causal LM class (the early-exit runner).
"""

from __future__ import annotations

import importlib
from typing import ClassVar

from specplug.patches.base import Patch, PatchError, PatchSet
from specplug.patches.sglang.version import (
    SUPPORTED,
    SUPPORTED_RANGE,
    SglangVersionError,
    check_version,
    detect_sglang_version,
    sglang_version,
)

__all__ = [
    "Pin",
    "SGLANG_PATCHES",
    "WORKER_MODULES",
    "DECODER_PINS",
    "check_worker",
    "check_decoder",
    "SUPPORTED",
    "SUPPORTED_RANGE",
    "SglangVersionError",
    "check_version",
    "sglang_version",
    "PatchError",
]

NGRAM_WORKER = "sglang.srt.speculative.ngram_worker"
NGRAM_INFO = "sglang.srt.speculative.ngram_info"
BASE_SPEC_WORKER = "sglang.srt.speculative.base_spec_worker"
FORWARD_BATCH = "sglang.srt.model_executor.forward_batch_info"


class Pin(Patch):
    """A fingerprint-only patch: SGLang code the adapter overrides, calls or steers through
    attributes, replaced nowhere. ``apply`` checks it (see :meth:`Patch.check`) and records it."""

    #: what the adapter relies on, for the error message
    reason: ClassVar[str] = ""

    def _fail(self, why: str) -> PatchError:
        return PatchError(
            f"SGLang's {self.qualname} ({type(self).__name__}): {why}; specplug's SGLang adapter "
            f"relies on it ({self.reason}). specplug supports {self.supported_text or SUPPORTED_RANGE}"
        )

    def apply(self, module=None) -> Pin:
        if self.applied:
            raise self._fail("this pin is already checked")
        self.check(module)
        self.owner, _, self.original = self._resolve(module)
        self.applied = True
        return self

    def revert(self) -> None:
        self.applied = False


# ------------------------------------------------------------------ the worker's pins
class NgramWorkerInit(Pin):
    module, target = NGRAM_WORKER, "NGRAMWorker.__init__"
    fingerprints = frozenset({"b06e0d3083a4c40a"})
    reason = "SpecplugWorker.__init__ sets the attributes it sets, without the n-gram corpus"


class NgramWorkerAllocMemoryPool(Pin):
    module, target = NGRAM_WORKER, "NGRAMWorker.alloc_memory_pool"
    fingerprints = frozenset({"ea2e4829cbbba938"})
    reason = "the memory pools and max_batch_size, then the preallocated buffers"


class NgramWorkerPreallocated(Pin):
    module, target = NGRAM_WORKER, "NGRAMWorker._init_preallocated_tensors"
    fingerprints = frozenset({"ee86fc4d3c5463e7"})
    reason = "the launch-width buffers and their per-batch-size view lists, re-viewed at other widths"


class NgramWorkerPrepareVerify(Pin):
    module, target = NGRAM_WORKER, "NGRAMWorker._prepare_for_speculative_decoding"
    fingerprints = frozenset({"3a2923b0a8896092"})
    reason = "it reads the view lists and draft_token_num at every step and calls _prepare_draft_tokens"


class NgramWorkerPrepareDraftTokens(Pin):
    module, target = NGRAM_WORKER, "NGRAMWorker._prepare_draft_tokens"
    fingerprints = frozenset({"566c95af662c86f9"})
    reason = "overridden: draft tokens [B*W] and mask [B*W*W] from the drafter, prev_* staging emptied"


class NgramWorkerUpdateCorpus(Pin):
    module, target = NGRAM_WORKER, "NGRAMWorker._update_ngram_corpus"
    fingerprints = frozenset({"5e26a8b5a4448d1a"})
    reason = "overridden by a no-op: the drafter observes the verified tokens instead"


class NgramWorkerForward(Pin):
    module, target = NGRAM_WORKER, "NGRAMWorker.forward_batch_generation"
    fingerprints = frozenset({"065a790dacf09ab7"})
    reason = (
        "wrapped: the result's accept_tokens [B*W] / accept_lens, the verify logits, and departures "
        "through ngram_corpus.erase_match_state"
    )


class NgramWorkerClearCachePool(Pin):
    module, target = NGRAM_WORKER, "NGRAMWorker.clear_cache_pool"
    fingerprints = frozenset({"fd3612a8d308851b"})
    reason = "overridden: resets the drafting session"


class NgramVerifyInputInit(Pin):
    module, target = NGRAM_INFO, "NgramVerifyInput.__init__"
    fingerprints = frozenset({"06651ec80b9fb29a"})
    reason = "the width fields (draft_token_num, num_tokens_per_req, ...) relayout sets back to the launch width"


class NgramVerifyInputFilter(Pin):
    module, target = NGRAM_INFO, "NgramVerifyInput.filter_batch"
    fingerprints = frozenset({"6b0aa25ff5c05389"})
    reason = "it reshapes the kept accept_tokens by draft_token_num"


class NgramVerifyInputMerge(Pin):
    module, target = NGRAM_INFO, "NgramVerifyInput.merge_batch"
    fingerprints = frozenset({"18dba5a5587d33b8"})
    reason = "it concatenates kept accept_tokens of batches stored at one width"


class SpecWorkerNoteFinished(Pin):
    module, target = BASE_SPEC_WORKER, "BaseSpecWorker.note_request_finished"
    fingerprints = frozenset({"454323cc2a5571c2"})
    reason = "overridden: the scheduler's finished / aborted signal finishes the request's drafter state"


# ------------------------------------------------------------------ the early-exit runner's pins
class LlamaModelForward(Pin):
    module, target = "sglang.srt.models.llama", "LlamaModel.forward"
    fingerprints = frozenset({"df0df08fa83d01d8"})
    reason = "its layer loop runs to end_layer and captures layers_to_capture (early-exit drafting)"


class Qwen2ModelForward(Pin):
    module, target = "sglang.srt.models.qwen2", "Qwen2Model.forward"
    fingerprints = frozenset({"262debbe4288dbea"})
    reason = LlamaModelForward.reason


class ForwardBatchInitNew(Pin):
    module, target = FORWARD_BATCH, "ForwardBatch.init_new"
    fingerprints = frozenset({"54538e97ec8a6803"})
    reason = "early-exit draft forwards build a DECODE batch from the running batch's swapped fields"


WORKER_MODULES = (NGRAM_WORKER, NGRAM_INFO, BASE_SPEC_WORKER)
#: causal LM class -> the pin of its decoder's forward (the classes the early-exit runner drives)
DECODER_PINS: dict[str, type[Pin]] = {"LlamaForCausalLM": LlamaModelForward, "Qwen2ForCausalLM": Qwen2ModelForward}

SGLANG_PATCHES = PatchSet(
    "SGLang",
    SUPPORTED,
    [
        NgramWorkerInit,
        NgramWorkerAllocMemoryPool,
        NgramWorkerPreallocated,
        NgramWorkerPrepareVerify,
        NgramWorkerPrepareDraftTokens,
        NgramWorkerUpdateCorpus,
        NgramWorkerForward,
        NgramWorkerClearCachePool,
        NgramVerifyInputInit,
        NgramVerifyInputFilter,
        NgramVerifyInputMerge,
        SpecWorkerNoteFinished,
        LlamaModelForward,
        Qwen2ModelForward,
        ForwardBatchInitNew,
    ],
    detect_sglang_version,
    supported_text=SUPPORTED_RANGE,
)


def _check_modules(names) -> None:
    """Check the pins of each module once per process (version first); PatchError on a mismatch."""
    for name in names:
        if all(SGLANG_PATCHES.is_applied(p) for p in SGLANG_PATCHES.patch_types if p.module == name):
            continue
        SGLANG_PATCHES.apply_for(importlib.import_module(name))


def check_worker() -> None:
    """The SGLang version and the NGRAMWorker code ``SpecplugWorker`` relies on."""
    _check_modules(WORKER_MODULES)


def check_decoder(causal_lm: str) -> None:
    """The decoder code the early-exit runner steers, for causal LM class ``causal_lm``
    (one of :data:`DECODER_PINS`)."""
    _check_modules((DECODER_PINS[causal_lm].module, FORWARD_BATCH))
