"""``ipex.llm.functional``: fused norm, rotary embedding and varlen attention, pure torch.

Signatures and in-place effects follow IPEX's CPU functions as TGI calls them
(``layers/layernorm.py``, ``layers/rotary.py``, ``layers/attention/ipex.py``).
"""

from __future__ import annotations

import torch

from .._missing import missing

__all__ = [
    "add_rms_norm",
    "rotary_embedding",
    "varlen_attention",
    "add_layer_norm",
    "bgmv_expand",
    "bgmv_shrink",
    "sgmv_expand",
    "sgmv_shrink",
]

# reached by other architectures or by LoRA adapters, not by a Llama without adapters
add_layer_norm = missing("llm.functional.add_layer_norm")
bgmv_expand = missing("llm.functional.bgmv_expand")
bgmv_shrink = missing("llm.functional.bgmv_shrink")
sgmv_expand = missing("llm.functional.sgmv_expand")
sgmv_shrink = missing("llm.functional.sgmv_shrink")


def add_rms_norm(
    residual: torch.Tensor | None,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    eps: float,
    add_back: bool = False,
) -> torch.Tensor:
    """RMSNorm of ``x + residual`` (of ``x`` when ``residual`` is None); with ``add_back``
    the sum is stored into ``residual`` (TGI then returns ``residual`` as the next one)."""
    if residual is not None:
        x = x + residual
        if add_back:
            residual.copy_(x)
    # as TGI's non-fused RMSNorm: the statistics in fp32, the result in the input dtype
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    out = weight * h.to(x.dtype)
    return out if bias is None else out + bias


def rotary_embedding(
    query: torch.Tensor,
    key: torch.Tensor,
    sin: torch.Tensor,
    cos: torch.Tensor,
    rotary_dim: int,
    rotary_half: bool,
    position_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate the first ``rotary_dim`` features of every head of ``query`` and ``key``
    ([T, H, D], ``key`` may be a strided view) in place. ``cos``/``sin``: [T, 1, rotary_dim/2]
    (already gathered at the positions: ``position_ids`` must be None). ``rotary_half``: the
    two halves rotate together (GPT-NeoX, Llama); else interleaved pairs (GPT-J)."""
    if position_ids is not None:
        raise NotImplementedError("rotary_embedding with position_ids: TGI passes gathered cos/sin")
    half = rotary_dim // 2
    if cos.shape[-1] != half or sin.shape[-1] != half:
        raise ValueError(f"cos/sin have {cos.shape[-1]} features, expected rotary_dim/2 = {half}")
    c = cos.reshape(cos.shape[0], 1, half)
    s = sin.reshape(sin.shape[0], 1, half)
    for t in (query, key):
        part = t[..., :rotary_dim]
        if rotary_half:
            x1, x2 = part[..., :half], part[..., half:]
        else:
            x1, x2 = part[..., 0::2], part[..., 1::2]
        o1 = (x1 * c - x2 * s).to(t.dtype)
        o2 = (x2 * c + x1 * s).to(t.dtype)
        x1.copy_(o1)
        x2.copy_(o2)
    return query, key


def _segments(cu: torch.Tensor, total: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per token of a packed varlen batch: (sequence index, position in it, its length)."""
    cu = cu.to(torch.int64)
    lengths = cu[1:] - cu[:-1]
    seq = torch.repeat_interleave(torch.arange(lengths.numel()), lengths, output_size=total)
    pos = torch.arange(total) - cu[seq]
    return seq, pos, lengths[seq]


def _grouped_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor, scale: float
) -> torch.Tensor:
    """softmax(scale * q k^T, over ``allowed``) v, grouped-query. q [..., Hq, Tq, D],
    k/v [..., Hkv, Tk, D], ``allowed`` broadcastable to [..., 1, Tq, Tk]; fp32 inside.
    Keys outside ``allowed`` may hold anything; values there must be finite (0 * NaN = NaN:
    callers zero unwritten cache rows, which TGI allocates with ``torch.empty``)."""
    hq, hkv = q.shape[-3], k.shape[-3]
    if hq % hkv:
        raise ValueError(f"{hq} query heads are not a multiple of {hkv} key/value heads")
    g, t, d = hq // hkv, q.shape[-2], q.shape[-1]
    lead = q.shape[:-3]
    # the G query heads of one key/value head become G x Tq rows of one plain batched matmul
    qg = q.to(torch.float32).reshape(*lead, hkv, g * t, d)
    scores = torch.matmul(qg, k.to(torch.float32).transpose(-1, -2)) * scale  # [..., Hkv, G*Tq, Tk]
    mask = allowed.expand(*lead, 1, t, k.shape[-2]).unsqueeze(-3).expand(*lead, 1, g, t, k.shape[-2])
    scores = scores.masked_fill(~mask.reshape(*lead, 1, g * t, k.shape[-2]), float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num_(0.0)  # rows with nothing allowed: zeros
    out = torch.matmul(probs, v.to(torch.float32))  # [..., Hkv, G*Tq, D]
    return out.reshape(*lead, hq, t, d)


def varlen_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    out: torch.Tensor,
    seqlen_q: torch.Tensor,
    seqlen_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    pdropout: float,
    softmax_scale: float,
    zero_tensors: bool,
    is_causal: bool,
    return_softmax: bool,
    gen_: torch.Generator | None,
) -> torch.Tensor:
    """Attention over a packed batch of sequences (prefill): ``query`` [Tq, Hq, D],
    ``key``/``value`` [Tk, Hkv, D], ``seqlen_q``/``seqlen_k`` cumulative lengths; writes
    ``out`` [Tq, Hq, D]. Causal masks align the ends of each sequence's queries and keys."""
    if pdropout or return_softmax:
        raise NotImplementedError("varlen_attention with dropout or returned softmax")
    tq, tk = query.shape[0], key.shape[0]
    sq, pq, lq = _segments(seqlen_q, tq)
    sk, pk, _ = _segments(seqlen_k, tk)
    # one block-diagonal mask: every sequence attends to its own keys only
    allowed = sq[:, None] == sk[None, :]
    if is_causal:  # query i of a sequence sees its keys up to i + (keys - queries)
        keys = (seqlen_k[1:] - seqlen_k[:-1]).to(torch.int64)[sq]
        allowed &= pk[None, :] <= (pq + keys - lq)[:, None]
    o = _grouped_attention(query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1), allowed, softmax_scale)
    out.copy_(o.transpose(0, 1).to(out.dtype))
    return out
