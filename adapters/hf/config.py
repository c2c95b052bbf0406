"""What the embedded engine is asked to do, and what it reports per request (no torch here:
the CLI validates settings before the heavy imports)."""

from __future__ import annotations

from dataclasses import dataclass, field

from specplug.drafters.errors import ConfigError
from specplug.drafters.sampling import check_sampling

__all__ = ["SamplingConfig", "GenerationConfig", "GenerationResult", "FINISH_REASONS"]

FINISH_REASONS = ("eos", "stop", "length")


@dataclass
class SamplingConfig:
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def validate(self) -> SamplingConfig:
        check_sampling(self.temperature, self.top_k, self.top_p)
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")
        return self


@dataclass
class GenerationConfig:
    max_new_tokens: int = 128
    #: extra stop tokens; the tokenizer's / model's EOS ids always stop too
    stop_token_ids: tuple[int, ...] = ()
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    def validate(self, vocab_size: int) -> GenerationConfig:
        n = self.max_new_tokens
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"max_new_tokens must be an integer >= 1, got {n!r}")
        try:
            stops = tuple(int(t) for t in self.stop_token_ids)
        except (TypeError, ValueError):
            raise ConfigError(f"stop_token_ids must be a sequence of token ids, got {self.stop_token_ids!r}") from None
        bad = [t for t in stops if not 0 <= t < vocab_size]
        if bad:
            raise ConfigError(f"stop_token_ids {bad} lie outside the vocabulary [0, {vocab_size})")
        self.sampling.validate()
        return self


@dataclass
class GenerationResult:
    """One request's output and accounting.

    ``steps`` counts every target forward pass that committed tokens to this request,
    prefill included: prefill emits the first token (step 1), every verify pass after it is
    one more step. So ``sum(accepted_per_step) == len(output_ids)`` and the mean accepted
    tokens ``mat = len(output_ids) / steps`` is exactly 1.0 for autoregressive decoding.
    Times are wall-clock seconds of the batch steps this request took part in:
    ``draft_time_s`` = propose + observe, ``verify_time_s`` = prefill + tree forward passes,
    verification and KV compaction, ``total_time_s`` = from the ``generate`` call until the
    request finished.
    """

    output_ids: list[int]
    steps: int
    accepted_per_step: list[int]
    draft_time_s: float = 0.0
    verify_time_s: float = 0.0
    total_time_s: float = 0.0
    finish_reason: str = "length"  # "eos" | "stop" | "length"
    speculative_steps: int = 0  # verify steps whose tree had a draft node (after the budget cut)

    @property
    def mat(self) -> float:
        """Mean accepted (committed) tokens per step."""
        return len(self.output_ids) / self.steps if self.steps else 0.0

    @property
    def tokens_per_s(self) -> float:
        return len(self.output_ids) / self.total_time_s if self.total_time_s > 0 else 0.0
