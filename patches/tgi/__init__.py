"""Runtime patches of TGI 3.3.5-3.3.7: a specplug drafter at TGI's n-gram drafting point.

TGI has no plugin interface. With ``--speculate N`` and no Medusa/MLP speculator
weights, ``HeterogeneousNextTokenChooser.__call__`` (``text_generation_server.utils.tokens``)
verifies last step's ``[B, N]`` draft chains and then calls the module global
``create_n_gram_speculation(input_ids, next_ids, accepted_ids, speculate, verbose)`` for
the next ones. Four patches, one per target:

================================  ==========================================================
:class:`NGramSpeculationPatch`    ``utils.tokens.create_n_gram_speculation``: the drafting
                                  point; returns the specplug drafter's best chains
:class:`ChooserCallPatch`         ``HeterogeneousNextTokenChooser.__call__``: remembers the
                                  scores tensor of the call (top-k feedback)
:class:`GenerateTokenPatch`       ``FlashCausalLM.generate_token``: exposes the batch (request
                                  ids, committed tokens, verified chains) to the drafting point;
                                  finishes every request when the batch finishes
:class:`BatchFilterPatch`         ``FlashCausalLMBatch.filter``: finishes dropped requests
================================  ==========================================================

``FlashCausalLMBatch.concatenate`` needs no patch: state is keyed by request id, and rows
are mapped to ids afresh from ``batch.requests`` at every step. Per-request bookkeeping
is :class:`specplug.adapters.tgi.ChainSpeculation` (engine-free, unit-tested).

The patches apply from a post-import hook (:mod:`specplug.plugins.tgi_hook`) when
``SPECPLUG_TGI_ALGORITHM`` is set; tests call :func:`enable` and :func:`apply` directly.
A failure of the drafter never stops TGI mid-batch: the step falls back to TGI's own
n-gram draft (lossless as well), the error is logged, and state is rebuilt next step.
"""
from __future__ import annotations

import contextvars
import os
import sys
import traceback
import types
from dataclasses import dataclass
from typing import Any, Mapping

from specplug.adapters.tgi.runtime import ChainSpeculation
from specplug.drafters import registry
from specplug.drafters.errors import ConfigError
from specplug.patches.base import Patch, PatchError, PatchSet, log
from specplug.patches.tgi.version import SUPPORTED, SUPPORTED_TEXT, detect_tgi_version

__all__ = ["TOKENS_MODULE", "FLASH_MODULE", "ENV_ALGORITHM", "ENV_OPTIONS", "TGI_PATCHES",
           "NGramSpeculationPatch", "ChooserCallPatch", "GenerateTokenPatch", "BatchFilterPatch",
           "TgiSpeculation", "enable", "enable_from_env", "disable", "controller", "apply", "revert", "batch_step",
           "on_module_imported", "PatchError"]

TOKENS_MODULE = "text_generation_server.utils.tokens"
FLASH_MODULE = "text_generation_server.models.flash_causal_lm"
ENV_ALGORITHM = "SPECPLUG_TGI_ALGORITHM"
ENV_OPTIONS = "SPECPLUG_TGI_OPTIONS"

#: log acceptance statistics every this many engine steps (0: never)
STATS_EVERY = 1000
#: log at most this many drafter errors with their traceback
MAX_ERROR_LOGS = 5


@dataclass
class _Step:
    batch: Any          # FlashCausalLMBatch, or any object with .requests[i].id, .all_input_ids, .speculative_ids
    prefill: bool


_step: contextvars.ContextVar[_Step | None] = contextvars.ContextVar("specplug_tgi_step", default=None)
_scores: contextvars.ContextVar[Any] = contextvars.ContextVar("specplug_tgi_scores", default=None)


class TgiSpeculation:
    """The process's drafter at TGI's drafting point (one per shard process)."""

    def __init__(self, algorithm: str, options: Mapping[str, Any] | None = None, **runtime_kw):
        self.runtime = ChainSpeculation(algorithm, options, **runtime_kw)
        self.algorithm = self.runtime.spec.name
        self.fallbacks = 0
        self.errors = 0
        self._warned: set[str] = set()

    def warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log("warning", message)

    # -- the drafting point
    def draft(self, original, input_ids, next_ids, accepted_ids, speculate, verbose):
        step = _step.get()
        scores = _scores.get()
        if step is None or scores is None:
            self.fallbacks += 1
            self.warn_once("context", "specplug: TGI drafted outside FlashCausalLM.generate_token (no batch "
                                      "to key requests by); using TGI's own n-gram speculation there")
            return original(input_ids, next_ids, accepted_ids, speculate, verbose)
        batch = step.batch
        b = int(accepted_ids.shape[0])
        if len(batch.requests) != b:
            self.fallbacks += 1
            self.warn_once("rows", f"specplug: TGI's chooser has {b} rows but the batch has "
                                   f"{len(batch.requests)} requests; using TGI's n-gram this step")
            return original(input_ids, next_ids, accepted_ids, speculate, verbose)
        try:
            return self._draft(batch, step.prefill, scores, input_ids, next_ids, accepted_ids, speculate)
        except Exception:
            self.errors += 1
            if self.errors <= MAX_ERROR_LOGS:
                log("error", f"specplug: the {self.algorithm} drafter failed; this step uses TGI's n-gram "
                             f"draft and drafter state is rebuilt:\n{traceback.format_exc()}")
            self.runtime.reset()
            return original(input_ids, next_ids, accepted_ids, speculate, verbose)

    def _draft(self, batch, prefill, scores, input_ids, next_ids, accepted_ids, speculate):
        import torch

        rt = self.runtime
        b = int(accepted_ids.shape[0])
        vocab = int(scores.shape[-1])
        counts = accepted_ids.tolist()                     # the GPU -> CPU sync TGI does later anyway
        ids = next_ids.tolist()
        spec = getattr(batch, "speculative_ids", None)
        verified = None if spec is None else spec.tolist()
        topk = None
        rt.ensure_drafter(vocab)
        if rt.uses_target_topk:
            k = min(rt.topk, vocab)
            # the chooser processed these scores in place (penalties, warpers): [B * S, V]
            flat = scores.reshape(-1, vocab)
            topk = torch.topk(flat, k, dim=-1).indices.view(b, flat.shape[0] // b, k).cpu().numpy()
        drafts = rt.draft([r.id for r in batch.requests], batch.all_input_ids, ids, counts, int(speculate),
                          vocab_size=vocab, verified=verified, prefill=prefill, topk=topk)
        return torch.from_numpy(drafts).to(device=input_ids.device, dtype=input_ids.dtype)

    # -- batch lifecycle
    def after_step(self, batch, next_batch) -> None:
        rt = self.runtime
        if next_batch is None:                  # every request of the batch stopped
            rt.finish([r.id for r in batch.requests])
        rt.end_step()
        if STATS_EVERY and rt.step % STATS_EVERY == 0 and rt.verify_rows:
            log("info", f"specplug: {self.algorithm}: {rt.mean_accepted():.2f} tokens per verify step "
                        f"over {rt.verify_rows} row-steps; {rt.active_requests()} active requests")

    def check_speculate(self) -> None:
        if "speculate" in self._warned:
            return
        self._warned.add("speculate")
        spec_mod = sys.modules.get("text_generation_server.utils.speculate")
        get = getattr(spec_mod, "get_speculate", None)
        if get is not None and not (get() or 0):
            log("warning", f"specplug: {ENV_ALGORITHM}={self.algorithm} is set but TGI runs without "
                           f"speculation; start the launcher with --speculate N")


_controller: TgiSpeculation | None = None


def controller() -> TgiSpeculation | None:
    return _controller


def enable(algorithm: str, options: Mapping[str, Any] | str | None = None, **runtime_kw) -> TgiSpeculation:
    """Select the drafter the patched TGI uses (validated now). ``options``: dict, JSON text or path."""
    global _controller
    if isinstance(options, str):
        options = registry.load_options(options)
    _controller = TgiSpeculation(algorithm, options, **runtime_kw)
    return _controller


def disable() -> None:
    global _controller
    _controller = None


def enable_from_env() -> TgiSpeculation:
    name = os.environ.get(ENV_ALGORITHM, "").strip()
    if not name:
        raise ConfigError(f"{ENV_ALGORITHM} is not set")
    try:
        return enable(name, registry.load_options(os.environ.get(ENV_OPTIONS)))
    except ConfigError as e:
        raise ConfigError(f"{ENV_ALGORITHM}/{ENV_OPTIONS}: {e}") from None


class batch_step:
    """Context manager: the batch the chooser call inside it belongs to (what
    :class:`GenerateTokenPatch` sets around ``generate_token``; drivers and tests use it
    directly). ``prefill``: the rows start now (their committed tokens are ``all_input_ids``)."""

    def __init__(self, batch, prefill: bool):
        self._value = _Step(batch, bool(prefill))
        self._token = None

    def __enter__(self):
        self._token = _step.set(self._value)
        return self

    def __exit__(self, *exc):
        _step.reset(self._token)
        return False


# ------------------------------------------------------------------ the patches
class NGramSpeculationPatch(Patch):
    module = TOKENS_MODULE
    target = "create_n_gram_speculation"
    fingerprints = frozenset({"c4e09c5020e3e368"})
    alias_prefix = "text_generation_server."

    def replacement(self, original):
        def create_n_gram_speculation(input_ids, next_ids, accepted_ids, speculate, verbose):
            ctl = _controller
            if ctl is None:
                return original(input_ids, next_ids, accepted_ids, speculate, verbose)
            return ctl.draft(original, input_ids, next_ids, accepted_ids, speculate, verbose)
        return create_n_gram_speculation


class ChooserCallPatch(Patch):
    module = TOKENS_MODULE
    target = "HeterogeneousNextTokenChooser.__call__"
    fingerprints = frozenset({"d2cf0c8e7249e80b"})

    def replacement(self, original):
        def __call__(self, input_ids, scores, speculate, speculated_ids=None, speculative_scores=None,
                     verbose=False):
            token = _scores.set(scores)
            try:
                return original(self, input_ids, scores, speculate, speculated_ids, speculative_scores,
                                verbose)
            finally:
                _scores.reset(token)
        return __call__


class GenerateTokenPatch(Patch):
    module = FLASH_MODULE
    target = "FlashCausalLM.generate_token"
    fingerprints = frozenset({"9495160620f6b402"})

    def replacement(self, original):
        def generate_token(self, batch):
            ctl = _controller
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
            ctl = _controller
            if ctl is not None:
                ctl.runtime.retain(before, request_ids)
            return out
        return filter


TGI_PATCHES = PatchSet("TGI", SUPPORTED,
                       [NGramSpeculationPatch, ChooserCallPatch, GenerateTokenPatch, BatchFilterPatch],
                       detect_tgi_version, supported_text=SUPPORTED_TEXT)


def apply(module: types.ModuleType) -> list[Patch]:
    """Apply the patches that target ``module`` (version checked on first use)."""
    return TGI_PATCHES.apply_for(module)


def revert() -> None:
    TGI_PATCHES.revert_all()


def on_module_imported(module: types.ModuleType) -> None:
    """Post-import hook callback: configure from the environment once, then patch."""
    if _controller is None:
        ctl = enable_from_env()
        log("info", f"specplug: TGI speculation by {ctl.algorithm} "
                    f"(options {ctl.runtime.options}) replaces TGI's n-gram drafting; "
                    f"--speculate N sets the chain length")
    apply(module)
