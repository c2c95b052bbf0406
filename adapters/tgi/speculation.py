"""The process's drafter at TGI's drafting point, and what the TGI patches tell it.

:mod:`specplug.patches.tgi` wraps four TGI functions; the wrappers only call in here:
``batch_step`` around ``FlashCausalLM.generate_token`` (the batch the chooser call inside
belongs to), ``chooser_scores`` around ``HeterogeneousNextTokenChooser.__call__`` (its
scores, for top-k feedback), :meth:`TgiSpeculation.draft` in place of
``create_n_gram_speculation``, and :meth:`TgiSpeculation.after_step` / ``runtime.retain``
for the batch lifecycle. Torch is imported on the first step only.

A step that cannot be drafted here (no batch to key rows by, or an error outside the
drafter) uses TGI's own n-gram drafts, lossless as well. Drafter errors and broken trees
are caught, logged and counted by the session; the rows they hit are drafted by TGI's
n-gram for that step (logged once here) and restart from TGI's tokens.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
import traceback
from collections.abc import Mapping
from typing import Any

import numpy as np

from specplug.adapters.tgi.runtime import ChainSpeculation, request_sampling
from specplug.drafters import registry
from specplug.drafters.errors import ConfigError
from specplug.drafters.session import MAX_ERROR_LOGS
from specplug.patches.base import log
from specplug.plugins import env

__all__ = [
    "TgiSpeculation",
    "enable",
    "enable_from_env",
    "disable",
    "controller",
    "batch_step",
    "chooser_scores",
    "STATS_EVERY",
]

#: log acceptance statistics every this many engine steps (0: never)
STATS_EVERY = 1000

_step: contextvars.ContextVar[tuple | None] = contextvars.ContextVar("specplug_tgi_step", default=None)
_scores: contextvars.ContextVar[Any] = contextvars.ContextVar("specplug_tgi_scores", default=None)


@contextlib.contextmanager
def _bound(var: contextvars.ContextVar, value: Any):
    token = var.set(value)
    try:
        yield
    finally:
        var.reset(token)


def batch_step(batch, prefill: bool):
    """Context manager: the batch (``.requests[i].id``, ``.all_input_ids``, ``.speculative_ids``) of
    the chooser call inside; ``prefill``: its rows start now. The ``generate_token`` patch sets it."""
    return _bound(_step, (batch, bool(prefill)))


def chooser_scores(scores):
    """Context manager: the scores tensor of the chooser call inside (TGI writes the processed
    scores back into it)."""
    return _bound(_scores, scores)


class TgiSpeculation:
    """One per shard process: a :class:`ChainSpeculation` behind TGI's drafting point."""

    def __init__(self, algorithm: str, options: Mapping[str, Any] | None = None, **runtime_kw):
        self.runtime = ChainSpeculation(algorithm, options, **runtime_kw)
        self.algorithm = self.runtime.spec.name
        self.steps = 0
        self.fallbacks = 0  # steps drafted by TGI's n-gram: no batch context
        self.errors = 0  # ... or an error outside the drafter (the session handles the drafter's)
        self.fallback_rows = 0  # row-steps drafted by TGI's n-gram because the drafter failed them
        self._warned: set[str] = set()

    def warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log("warning", message)

    # -- the drafting point
    def draft(self, original, input_ids, next_ids, accepted_ids, speculate, verbose):
        step, scores = _step.get(), _scores.get()
        if step is None or scores is None:
            self.fallbacks += 1
            self.warn_once(
                "context",
                "specplug: TGI drafted outside FlashCausalLM.generate_token (no batch "
                "to key requests by); using TGI's own n-gram speculation there",
            )
            return original(input_ids, next_ids, accepted_ids, speculate, verbose)
        batch, prefill = step
        if len(batch.requests) != int(accepted_ids.shape[0]):
            self.fallbacks += 1
            self.warn_once(
                "rows",
                f"specplug: TGI's chooser has {int(accepted_ids.shape[0])} rows but the "
                f"batch has {len(batch.requests)} requests; using TGI's n-gram this step",
            )
            return original(input_ids, next_ids, accepted_ids, speculate, verbose)
        try:
            return self._draft(
                original, batch, prefill, scores, input_ids, next_ids, accepted_ids, int(speculate), verbose
            )
        except Exception:  # noqa: BLE001 -- a glue bug must not take TGI's batch down
            self.errors += 1
            if self.errors <= MAX_ERROR_LOGS:
                log(
                    "error",
                    f"specplug: TGI speculation by {self.algorithm} failed; this step uses TGI's "
                    f"n-gram draft and drafter state is rebuilt:\n{traceback.format_exc()}",
                )
            self.runtime.reset()
            return original(input_ids, next_ids, accepted_ids, speculate, verbose)

    def _draft(self, original, batch, prefill, scores, input_ids, next_ids, accepted_ids, speculate, verbose):
        import torch

        rt = self.runtime
        b, vocab = int(accepted_ids.shape[0]), int(scores.shape[-1])
        rt.ensure_drafter(vocab)
        spec = batch.speculative_ids
        topk = probs = None
        if rt.topk and spec is not None and not prefill:
            # the chooser processed these scores in place (penalties, warpers): [B * S, V]
            flat = scores.reshape(b, -1, vocab)
            vals, idx = torch.topk(flat, min(rt.topk, vocab), dim=-1)
            topk = idx.cpu().numpy()
            if rt.topk_probs:  # of the distribution TGI chose from
                lse = torch.logsumexp(flat, -1, keepdim=True)
                probs = (vals.float() - lse.float()).exp().cpu().numpy()
        drafts = rt.draft(
            [r.id for r in batch.requests],
            batch.all_input_ids,
            next_ids.tolist(),
            accepted_ids.tolist(),
            speculate,
            vocab_size=vocab,
            prefill=prefill,
            verified=None if spec is None else spec.tolist(),
            topk=topk,
            topk_probs=probs,
            sampling=[request_sampling(getattr(r, "parameters", None)) for r in batch.requests],
        )
        out = torch.from_numpy(drafts).to(device=input_ids.device, dtype=input_ids.dtype)
        failed = rt.fallback_rows
        if failed.any():  # the drafter failed these rows: TGI's n-gram drafts them (lossless too)
            self.fallback_rows += int(failed.sum())
            self.warn_once(
                "drafter",
                f"specplug: the {self.algorithm} drafter failed for some requests (see the error "
                f"above); TGI's own n-gram drafts them for that step, and they restart from "
                f"TGI's tokens (logged once; counted in fallback_rows)",
            )
            rows = torch.from_numpy(np.flatnonzero(failed)).to(out.device)
            ngram = original(input_ids, next_ids, accepted_ids, speculate, verbose)
            out[rows] = ngram[rows].to(out.dtype)
        return out

    # -- batch lifecycle
    def after_step(self, batch, next_batch) -> None:
        rt = self.runtime
        if next_batch is None:  # every request of the batch stopped
            rt.finish([r.id for r in batch.requests])
        rt.end_step()
        self.steps += 1
        st = rt.stats
        if STATS_EVERY and self.steps % STATS_EVERY == 0 and st.verified_requests:
            log(
                "info",
                f"specplug: {self.algorithm}: {st.mean_accepted:.2f} tokens per verify step over "
                f"{st.verified_requests} row-steps; {rt.active_requests()} active requests; "
                f"{st.restarts} restarts, {st.drafter_errors} drafter errors, {st.evicted} evicted",
            )

    def check_speculate(self) -> None:
        if "speculate" in self._warned:
            return
        self._warned.add("speculate")
        get = getattr(sys.modules.get("text_generation_server.utils.speculate"), "get_speculate", None)
        if get is not None and not (get() or 0):
            log(
                "warning",
                f"specplug: {env.TGI_ALGORITHM}={self.algorithm} is set but TGI runs without "
                f"speculation; start the launcher with --speculate N",
            )


_controller: TgiSpeculation | None = None


def controller() -> TgiSpeculation | None:
    return _controller


def enable(algorithm: str, options: Mapping[str, Any] | str | None = None, **runtime_kw) -> TgiSpeculation:
    """Select the drafter the patched TGI uses (validated now). ``options``: dict, JSON text or path."""
    global _controller
    opts = registry.load_options(options) if isinstance(options, str) else options
    _controller = TgiSpeculation(algorithm, opts, **runtime_kw)
    return _controller


def disable() -> None:
    global _controller
    _controller = None


def enable_from_env() -> TgiSpeculation:
    name = env.read(env.TGI_ALGORITHM)
    if not name:
        raise ConfigError(f"{env.TGI_ALGORITHM} is not set")
    try:
        return enable(name, registry.load_options(env.read(env.TGI_OPTIONS)))
    except ConfigError as e:
        raise ConfigError(f"{env.TGI_ALGORITHM}/{env.TGI_OPTIONS}: {e}") from None
