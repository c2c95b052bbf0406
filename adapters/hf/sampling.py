"""Logit warping for the embedded engine: the core's ``warp_logits`` under a SamplingConfig."""

from __future__ import annotations

import torch

from specplug.drafters.sampling import warp_logits

from .config import SamplingConfig

__all__ = ["SamplingConfig", "warp_probs"]


def warp_probs(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """Next-token probabilities after temperature, top-k and top-p, over the last dim."""
    return warp_logits(logits, cfg.temperature, cfg.top_k, cfg.top_p)
