"""Logit warping for sampled decoding: temperature, top-k, top-p (nucleus).

``check_sampling`` validates the settings once (engine start-up, request admission);
``warp_logits`` turns logits into the target distribution the sampling verifier and the
sampler use. Temperature 0 means greedy decoding, which does not warp: it takes the
argmax (``verify_greedy``).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from .errors import ConfigError

__all__ = ["check_sampling", "warp_logits", "SamplingParams", "GREEDY", "REGIME_NAMES", "sampling_regime"]

#: sampling regimes that drafters keep separate calibration for: greedy, then temperature
#: bins (upper bounds exclusive); greedy results never see sampled evidence
REGIME_EDGES = (0.7, 0.9)
REGIME_NAMES = ("greedy", "T < 0.7", "0.7 <= T < 0.9", "T >= 0.9")


def sampling_regime(temperature: float) -> int:
    """Calibration regime of a temperature: 0 greedy, 1.. the bins of ``REGIME_EDGES``."""
    if temperature <= 0.0:
        return 0
    return 1 + sum(temperature >= e for e in REGIME_EDGES)


def check_sampling(temperature, top_k=0, top_p=1.0) -> tuple[float, int, float]:
    """Validate sampling settings; returns them normalised as (float, int, float).

    temperature >= 0 and finite (0: greedy), top_k >= 0 integer (0: off),
    0 < top_p <= 1 (1: off).
    """
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, numbers.Real)
        or not math.isfinite(float(temperature))
        or float(temperature) < 0
    ):
        raise ConfigError(f"temperature must be a finite number >= 0 (0 means greedy), got {temperature!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or int(top_k) < 0:
        raise ConfigError(f"top_k must be an integer >= 0 (0 disables top-k), got {top_k!r}")
    if (
        isinstance(top_p, bool)
        or not isinstance(top_p, numbers.Real)
        or not math.isfinite(float(top_p))
        or not 0.0 < float(top_p) <= 1.0
    ):
        raise ConfigError(f"top_p must be a number in (0, 1] (1 disables top-p), got {top_p!r}")
    return float(temperature), int(top_k), float(top_p)


@dataclass(frozen=True)
class SamplingParams:
    """One request's sampling settings as drafters see them (the session passes them at
    start and whenever they change). Temperature 0 is greedy decoding."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        t, k, p = check_sampling(self.temperature, self.top_k, self.top_p)
        object.__setattr__(self, "temperature", t)
        object.__setattr__(self, "top_k", k)
        object.__setattr__(self, "top_p", p)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def regime(self) -> int:
        """Index into ``REGIME_NAMES`` (see :func:`sampling_regime`)."""
        return sampling_regime(self.temperature)


GREEDY = SamplingParams()


def warp_logits(logits, temperature: float, top_k: int = 0, top_p: float = 1.0):
    """Probabilities over the last axis of ``logits`` ([..., V]) after temperature, top-k, top-p.

    top-k keeps every token whose logit is at least the k-th largest (ties at the
    threshold are kept); top-p then keeps the smallest set of most likely tokens whose
    mass reaches ``top_p`` (at least one token). Probabilities are float32 (float64 for
    float64 input); removed tokens get exactly 0 and every row sums to 1.
    """
    import torch  # here, not at import: check_sampling serves torch-free callers (CLI validation)

    temperature, top_k, top_p = check_sampling(temperature, top_k, top_p)
    if temperature == 0.0:
        raise ConfigError("temperature 0 is greedy decoding: take the argmax (verify_greedy), not warp_logits")
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    x = logits.to(dtype) / temperature
    v = x.shape[-1]
    if 0 < top_k < v:
        kth = torch.topk(x, top_k, dim=-1).values[..., -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if top_p < 1.0:
        sorted_x, order = torch.sort(x, dim=-1, descending=True)
        sorted_p = torch.softmax(sorted_x, dim=-1)
        before = torch.cumsum(sorted_p, dim=-1) - sorted_p  # mass strictly before each token
        drop_sorted = before >= top_p
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        x = x.masked_fill(drop, float("-inf"))
    return torch.softmax(x, dim=-1)
