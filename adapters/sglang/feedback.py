"""Verification feedback on the device: committed tokens, their counts and the target's
top-k ids per tree node, brought to the host with a single copy. Torch only (no SGLang)."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["device_feedback"]


def device_feedback(
    logits: torch.Tensor | None,
    accept_tokens: torch.Tensor,
    accept_lens: torch.Tensor,
    bs: int,
    width: int,
    k: int,
    probs: bool = False,
):
    """``logits`` [B*W, V] (verify logits, one row per packed node), ``accept_tokens`` [B*W]
    (SGLang's ``predict[accept_index]``), ``accept_lens`` [B] (bonus included).

    Returns host arrays: committed tokens [B, W] int64, counts [B] int64, and top-k ids
    [B, W, k] int32 (best first; None when ``k`` is 0). The top-k runs where the logits
    are; the three results travel in one concatenated int64 tensor. With ``probs`` a
    fourth result: the target's probabilities of those ids (softmax at temperature 1)
    [B, W, k] float32, for drafters whose trees grow on them (``uses_topk_probs``).
    """
    parts = [accept_tokens.reshape(bs, width).to(torch.int64), accept_lens.reshape(bs, 1).to(torch.int64)]
    top_p = None
    if k:
        flat = logits.reshape(bs * width, -1)
        top = torch.topk(flat, k, dim=-1, sorted=True)
        parts.append(top.indices.reshape(bs, width * k).to(torch.int64))
        if probs:
            lse = torch.logsumexp(flat.float(), dim=-1, keepdim=True)
            top_p = torch.exp(top.values.float() - lse).reshape(bs, width, k).cpu().numpy()
    host = torch.cat(parts, dim=1).cpu().numpy()
    tokens, lens = host[:, :width], host[:, width]
    topk = host[:, width + 1 :].reshape(bs, width, k).astype(np.int32) if k else None
    if probs:
        return tokens, lens, topk, top_p
    return tokens, lens, topk
