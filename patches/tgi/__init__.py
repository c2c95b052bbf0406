"""Runtime patches of TGI 3.3.5-3.3.7: a specplug drafter at TGI's n-gram drafting point.

TGI has no plugin interface. With ``--speculate N`` and no Medusa/MLP speculator
weights, ``HeterogeneousNextTokenChooser.__call__`` (``text_generation_server.utils.tokens``)
verifies last step's ``[B, N]`` draft chains and then calls the module global
``create_n_gram_speculation(input_ids, next_ids, accepted_ids, speculate, verbose)`` for
the next ones. Six patches, one per target:

================================  ==========================================================
:class:`NGramSpeculationPatch`    ``utils.tokens.create_n_gram_speculation``: the drafting
                                  point; returns the specplug drafter's best chains
:class:`ChooserCallPatch`         ``HeterogeneousNextTokenChooser.__call__``: remembers the
                                  scores tensor of the call (top-k feedback)
:class:`GenerateTokenPatch`       ``FlashCausalLM.generate_token``: exposes the batch (request
                                  ids, committed tokens, verified chains) to the drafting point;
                                  finishes every request when the batch finishes
:class:`BatchFilterPatch`         ``FlashCausalLMBatch.filter``: finishes dropped requests
:class:`WarmupPatch`              ``FlashCausalLM.warmup``: frees the warm-up batch's requests
                                  (TGI drops that batch without a filter or a cache entry)
:class:`CacheDeletePatch`         ``cache.Cache.delete``: finishes the requests of a batch the
                                  router clears (``ClearCache(id)``: every request of the batch
                                  cancelled; ``ClearCache()`` deletes every batch through it)
================================  ==========================================================

``FlashCausalLMBatch.concatenate`` needs no patch: state is keyed by request id, and rows
are mapped to ids afresh from ``batch.requests`` at every step. The wrappers only call the
adapter: the process's controller (:mod:`specplug.adapters.tgi.speculation`, re-exported
here: :func:`enable`, :func:`controller`, ...) over :class:`specplug.adapters.tgi.ChainSpeculation`.

The patches apply from a post-import hook (:mod:`specplug.plugins.tgi_hook`) when
``SPECPLUG_TGI_ALGORITHM`` is set; tests call :func:`enable` and :func:`apply` directly.
"""

from __future__ import annotations

import types

from specplug.adapters.tgi.speculation import (
    TgiSpeculation,
    batch_step,
    chooser_scores,
    controller,
    disable,
    enable,
    enable_from_env,
)
from specplug.patches.base import Patch, PatchError, PatchSet, log
from specplug.patches.tgi.version import SUPPORTED, SUPPORTED_TEXT, detect_tgi_version

__all__ = [
    "TOKENS_MODULE",
    "FLASH_MODULE",
    "TGI_PATCHES",
    "NGramSpeculationPatch",
    "ChooserCallPatch",
    "GenerateTokenPatch",
    "BatchFilterPatch",
    "WarmupPatch",
    "CacheDeletePatch",
    "CACHE_MODULE",
    "apply",
    "revert",
    "on_module_imported",
    "PatchError",
    # the controller lives with the adapter (specplug.adapters.tgi.speculation); re-exported
    "TgiSpeculation",
    "enable",
    "enable_from_env",
    "disable",
    "controller",
    "batch_step",
]

TOKENS_MODULE = "text_generation_server.utils.tokens"
FLASH_MODULE = "text_generation_server.models.flash_causal_lm"
CACHE_MODULE = "text_generation_server.cache"


# ------------------------------------------------------------------ the patches
class NGramSpeculationPatch(Patch):
    module = TOKENS_MODULE
    target = "create_n_gram_speculation"
    fingerprints = frozenset({"c4e09c5020e3e368"})
    alias_prefix = "text_generation_server."

    def replacement(self, original):
        def create_n_gram_speculation(input_ids, next_ids, accepted_ids, speculate, verbose):
            ctl = controller()
            if ctl is None:
                return original(input_ids, next_ids, accepted_ids, speculate, verbose)
            return ctl.draft(original, input_ids, next_ids, accepted_ids, speculate, verbose)

        return create_n_gram_speculation


class ChooserCallPatch(Patch):
    module = TOKENS_MODULE
    target = "HeterogeneousNextTokenChooser.__call__"
    fingerprints = frozenset({"d2cf0c8e7249e80b"})

    def replacement(self, original):
        def __call__(self, input_ids, scores, speculate, speculated_ids=None, speculative_scores=None, verbose=False):
            with chooser_scores(scores):
                return original(self, input_ids, scores, speculate, speculated_ids, speculative_scores, verbose)

        return __call__


class GenerateTokenPatch(Patch):
    module = FLASH_MODULE
    target = "FlashCausalLM.generate_token"
    fingerprints = frozenset({"9495160620f6b402"})

    def replacement(self, original):
        def generate_token(self, batch):
            ctl = controller()
            if ctl is None:
                return original(self, batch)
            ctl.check_speculate()
            with batch_step(batch, prefill=bool(getattr(batch, "prefilling", False))):
                result = original(self, batch)
            ctl.after_step(batch, result[1])
            return result

        return generate_token


class BatchFilterPatch(Patch):
    module = FLASH_MODULE
    target = "FlashCausalLMBatch.filter"
    fingerprints = frozenset({"73e13ba37324eec3"})

    def replacement(self, original):
        def filter(self, request_ids):
            before = [r.id for r in self.requests]
            out = original(self, request_ids)
            ctl = controller()
            if ctl is not None:
                ctl.runtime.retain(before, request_ids)
            return out

        return filter


class WarmupPatch(Patch):
    module = FLASH_MODULE
    target = "FlashCausalLM.warmup"
    fingerprints = frozenset({"a1e896fb41abdf55"})

    def replacement(self, original):
        def warmup(self, batch, max_input_tokens, max_total_tokens):
            out = original(self, batch, max_input_tokens, max_total_tokens)
            ctl = controller()
            if ctl is not None:  # warm-up's batch is dropped unseen; nothing else runs before it
                ctl.runtime.finish([r.id for r in batch.requests])
            return out

        return warmup


class CacheDeletePatch(Patch):
    module = CACHE_MODULE
    target = "Cache.delete"
    fingerprints = frozenset({"f413d08915bae9eb"})

    def replacement(self, original):
        def delete(self, batch_id):
            batch = self.cache.get(batch_id)
            out = original(self, batch_id)
            ctl = controller()
            if ctl is not None and batch is not None:
                ctl.runtime.finish([r.id for r in getattr(batch, "requests", ())])
            return out

        return delete


TGI_PATCHES = PatchSet(
    "TGI",
    SUPPORTED,
    [NGramSpeculationPatch, ChooserCallPatch, GenerateTokenPatch, BatchFilterPatch, WarmupPatch, CacheDeletePatch],
    detect_tgi_version,
    supported_text=SUPPORTED_TEXT,
)


def apply(module: types.ModuleType) -> list[Patch]:
    """Apply the patches that target ``module`` (version checked on first use)."""
    return TGI_PATCHES.apply_for(module)


def revert() -> None:
    TGI_PATCHES.revert_all()


def on_module_imported(module: types.ModuleType) -> None:
    """Post-import hook callback: configure from the environment once, then patch."""
    if controller() is None:
        ctl = enable_from_env()
        log(
            "info",
            f"specplug: TGI speculation by {ctl.algorithm} "
            f"(options {ctl.runtime.options}) replaces TGI's n-gram drafting; "
            f"--speculate N sets the chain length",
        )
    apply(module)
