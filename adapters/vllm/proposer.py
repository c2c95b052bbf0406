"""The ``custom_class`` proposer vLLM instantiates: ``SpecplugProposer(vllm_config)``.

vLLM 0.32 builds it in the model runner's constructor (``create_custom_proposer``), calls
``load_model`` (the CPU runner always does) and then, every step, ``propose(sampled_token_ids,
num_tokens_no_spec, token_ids_cpu, slot_mappings=...)``. Everything fails here, at start,
with one message: an unsupported vLLM (the patches' version gate), a bad option, an
algorithm vLLM cannot host, a drafter that raises on a probe request. Later, a drafter
error costs its requests that step's draft (the session's guard), and an error in this
adapter costs the whole step's drafts (logged): vLLM then runs a plain decode step.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Hashable, Sequence
from typing import Any, ClassVar

import numpy as np

from specplug.drafters import registry
from specplug.drafters.base import Drafter
from specplug.drafters.errors import ConfigError, SpecplugError

from .config import VllmSettings, budget_policy_from_env, settings_from_env
from .runtime import VllmChains, row_sampling

__all__ = ["SpecplugProposer", "live_proposers", "PROBE_ID"]

logger = logging.getLogger("specplug")

#: request id of the start-up probe (never a vLLM request id: those are strings)
PROBE_ID: Hashable = ("specplug", "probe")
_LIVE: list[weakref.ref] = []


def live_proposers() -> list[SpecplugProposer]:
    """The proposers alive in this process, oldest first (tests: no state left after draining)."""
    _LIVE[:] = [r for r in _LIVE if r() is not None]
    return [p for p in (r() for r in _LIVE) if p is not None]


class SpecplugProposer:
    """A specplug algorithm as vLLM's custom proposer; subclasses set :attr:`algorithm`."""

    algorithm: ClassVar[str] = ""

    def __init__(self, vllm_config: Any):
        from specplug.patches.vllm import ensure_applied

        ensure_applied()  # vLLM's version and the runner code the patches were written against
        spec = registry.get(self.algorithm)
        if spec.peer:
            raise ConfigError(f"{spec.name!r} is a benchmark peer, not a specplug algorithm")
        k = int(vllm_config.speculative_config.num_speculative_tokens)
        settings = settings_from_env(spec.name, k)
        model_config = vllm_config.model_config
        vocab = int(model_config.get_vocab_size())
        drafter = self.make_drafter(settings, vocab)
        self.chains = VllmChains(
            drafter, settings, max_model_len=int(model_config.max_model_len), policy=budget_policy_from_env()
        )
        self._probe(settings)
        self.input_batch: Any = None  # bound by the patches at every step
        _LIVE.append(weakref.ref(self))
        logger.info(
            "specplug: %s proposes chains of up to %d tokens from %d-node trees (load-aware: %s, top-%d feedback)",
            spec.engine_name,
            k,
            settings.tree_budget,
            "off" if self.chains.session.policy is None else "on",
            self.chains.session.topk,
        )

    def make_drafter(self, settings: VllmSettings, vocab_size: int) -> Drafter:
        """The drafter (tests override it with faulty ones)."""
        try:
            return registry.create(settings.algorithm, vocab_size, settings.options)
        except SpecplugError:
            raise
        except Exception as e:
            raise ConfigError(f"the {settings.algorithm} drafter failed to start: {type(e).__name__}: {e}") from e

    def _probe(self, settings: VllmSettings) -> None:
        """One request through start / propose / finish: a drafter that cannot draft fails now,
        not on the first batch (and its JIT code is compiled before the first request)."""
        drafter = self.chains.session.drafter
        ctx = [i % max(1, self.chains.session.vocab_size) for i in (1, 2, 3, 1, 2, 3, 1, 2)]
        try:
            drafter.start(PROBE_ID, ctx)
            drafter.propose([PROBE_ID], [settings.tree_budget])
        except Exception as e:
            raise ConfigError(
                f"the {settings.algorithm} drafter failed its start-up probe ({type(e).__name__}: {e})"
            ) from e
        finally:
            try:
                drafter.finish(PROBE_ID)
            except Exception:  # noqa: BLE001 -- the probe's own error is the one to report
                pass

    # ------------------------------------------------------------------ vLLM's interface
    def load_model(self, *args: Any, **kwargs: Any) -> None:
        """vLLM's CPU runner calls it unconditionally; specplug's drafters need no model here."""

    def propose(
        self,
        sampled_token_ids: Sequence[Sequence[int]],
        num_tokens_no_spec: np.ndarray,
        token_ids_cpu: np.ndarray,
        slot_mappings: Any = None,
        **kwargs: Any,
    ) -> list[list[int]]:
        b = len(sampled_token_ids)
        batch = self.input_batch
        if batch is None:  # the runner patches did not run: rows cannot be keyed
            return [[] for _ in range(b)]
        try:
            sampling = row_sampling(batch, b, self.chains.session.vocab_size)
            return self.chains.step(batch.req_ids, sampled_token_ids, num_tokens_no_spec, token_ids_cpu, sampling)
        except Exception:  # noqa: BLE001 -- an adapter bug costs this step's drafts, never the batch
            logger.exception("specplug: drafting failed; this step decodes without drafts")
            self.chains.session.reset()
            return [[] for _ in range(b)]

    # ------------------------------------------------------------------ what the patches call
    def on_schedule(self, input_batch: Any, scheduler_output: Any) -> None:
        self.input_batch = input_batch
        self.chains.on_schedule(
            scheduler_output.finished_req_ids,
            getattr(scheduler_output, "preempted_req_ids", None),
            scheduler_output.scheduled_spec_decode_tokens,
        )

    def on_logits(self, logits: Any, spec_decode_metadata: Any) -> None:
        """The target's top-k before the sampler (which may modify the logits in place)."""
        k = self.chains.session.topk
        if not k or logits is None:
            return
        import torch

        with torch.no_grad():
            raw = logits.float()
            vals, ids = raw.topk(k, dim=-1)
            probs = None
            if self.chains.session.topk_probs:
                probs = (vals - torch.logsumexp(raw, dim=-1, keepdim=True)).exp().cpu().numpy()
            ids_np = ids.to(torch.int32).cpu().numpy()
        drafts = [0] * ids_np.shape[0] if spec_decode_metadata is None else list(spec_decode_metadata.num_draft_tokens)
        self.chains.on_topk(ids_np, probs, drafts)

    def report(self) -> dict[str, Any]:
        return self.chains.report()

    @property
    def active(self) -> int:
        """Requests holding state: the session's and the drafter's (both 0 once drained)."""
        return max(self.chains.active, int(self.chains.session.drafter.active_requests() or 0))


def proposer_class(name: str) -> type[SpecplugProposer]:
    """The proposer class of one algorithm (``specplug.adapters.vllm.<ENGINE_NAME>``)."""
    spec = registry.get(name)
    return type(spec.engine_name, (SpecplugProposer,), {"algorithm": spec.name, "__module__": "specplug.adapters.vllm"})
