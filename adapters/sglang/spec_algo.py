"""``CustomSpecAlgo`` subclass shared by every specplug algorithm registered with SGLang.

specplug drafters are model-free tree drafters, so they ride SGLang's NGRAM path:
``is_ngram()`` is true (fixed-width verify of draft tokens plus an ancestor mask, no
draft KV cache), and server args are resolved as SGLang resolves them for NGRAM. It
also supplies the methods SGLang 0.5.23's scheduler calls but ``CustomSpecAlgo`` lacks
(``create_future_map``, ``carries_draft_hidden_states``, ``need_topk``).
"""

from __future__ import annotations

import logging

from sglang.srt.speculative.spec_registry import CustomSpecAlgo

logger = logging.getLogger(__name__)

#: used when --max-running-requests is not given (as SGLang does for NGRAM)
DEFAULT_MAX_RUNNING_REQUESTS = 48


class SpecplugSpecAlgo(CustomSpecAlgo):
    """One registered specplug algorithm (``self.name`` is its upper-case SGLang name)."""

    def is_ngram(self) -> bool:
        return True

    def has_draft_kv(self) -> bool:
        return False

    def carries_draft_hidden_states(self) -> bool:
        return False

    def need_topk(self) -> bool:
        return False

    def create_future_map(
        self, device, req_to_token_pool, needs_cpu_seq_lens: bool = True, needs_confidence_relay: bool = False
    ):
        from sglang.srt.managers.overlap_utils import FutureMap

        return FutureMap(device, self, req_to_token_pool, needs_cpu_seq_lens, needs_confidence_relay)

    @property
    def specplug_name(self) -> str:
        from specplug.drafters import registry

        return registry.get(self.name).name

    def handle_server_args(self, server_args) -> None:
        """Resolve what SGLang resolves for NGRAM; ``server_args`` records our writes."""
        from specplug.drafters import registry

        spec = registry.get(self.name)
        if getattr(server_args, "max_running_requests", None) is None:
            server_args.max_running_requests = DEFAULT_MAX_RUNNING_REQUESTS
        server_args.enable_mixed_chunk = False
        n = getattr(server_args, "speculative_num_draft_tokens", None)
        if n is None:
            n = max(1, int(spec.default_budget))
            server_args.speculative_num_draft_tokens = n
            logger.warning(
                "specplug: --speculative-num-draft-tokens not given; using %s's default budget %d", self.name, n
            )
        # Same tree shape parameters as SGLang gives NGRAM (its verify path, backends and
        # KV sizing, max(steps * topk, n) per request, are tested with these): topk > 1
        # keeps backends off their chain-only fast paths, trees are irregular anyway.
        topk = int(getattr(server_args, "speculative_ngram_max_bfs_breadth", None) or 10)
        server_args.speculative_eagle_topk = topk
        server_args.speculative_num_steps = max(1, int(n) // topk)
