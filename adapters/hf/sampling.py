"""Logit warping for sampling (temperature, top-k, top-p), vectorised over rows."""
from __future__ import annotations

import torch

from .config import SamplingConfig

__all__ = ["SamplingConfig", "warp_probs"]


def warp_probs(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """Next-token probabilities after temperature, top-k and top-p, over the last dim (fp32)."""
    x = logits.float() / float(cfg.temperature)
    vocab = x.shape[-1]
    if 0 < cfg.top_k < vocab:
        kth = torch.topk(x, cfg.top_k, dim=-1).values[..., -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_x, order = torch.sort(x, dim=-1, descending=True)
        sorted_p = torch.softmax(sorted_x, dim=-1)
        # drop a token when the tokens ranked above it already reach top_p (the best one stays)
        drop_sorted = (torch.cumsum(sorted_p, dim=-1) - sorted_p) >= cfg.top_p
        drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
        x = x.masked_fill(drop, float("-inf"))
    return torch.softmax(x, dim=-1)
