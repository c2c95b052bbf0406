"""``ipex.llm.modules``: the paged KV cache ops TGI's CPU path calls, pure torch.

Cache layout on the CPU (``layers/attention/kv_cache.py``): ``[blocks, kv_heads,
block_size, head_dim]`` for keys and values; slot ``s`` is row ``s % block_size`` of block
``s // block_size``.
"""

from __future__ import annotations

import torch

from .._missing import missing
from .functional import _grouped_attention

__all__ = ["PagedAttention", "GatedMLPMOE"]

#: mixture-of-experts MLP: imported by TGI's MoE layers, not reached by a Llama
GatedMLPMOE = missing("llm.modules.GatedMLPMOE")


def _check_dtype(kv_cache_dtype: str) -> None:
    if kv_cache_dtype != "auto":
        raise NotImplementedError(f"PagedAttention with kv_cache_dtype={kv_cache_dtype!r} (fp8 KV caches)")


def _gather_blocks(cache: torch.Tensor, block_tables: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """[rows, kv_heads, ceil(max(lengths) / block) * block, D]: each row's first
    ``lengths[row]`` tokens, in block order, a fresh tensor. Table columns past a row's own
    blocks are padding (TGI leaves any value there): block 0 is read instead."""
    bs = cache.shape[2]
    nb = max(-(-int(lengths.max()) // bs), 1) if lengths.numel() else 1
    table = block_tables[:, :nb].to(torch.int64)
    own = torch.arange(table.shape[1])[None, :] < (lengths[:, None] + bs - 1) // bs
    blocks = cache[table.where(own, 0)]  # [rows, nb, H, bs, D]
    return blocks.transpose(1, 2).flatten(2, 3)


def _written(values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Zero (in place) the gathered values past each row's length: rows never written hold
    whatever ``torch.empty`` left, NaN included, and 0 * NaN would leak into the output."""
    tail = torch.arange(values.shape[2])[None, :] >= lengths[:, None]
    return values.masked_fill_(tail[:, None, :, None], 0.0)


def _group_rows(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Rows with equal ``keys`` rows (TGI's B x (speculate + 1) speculative rows share their
    request's block table) as (unique keys [U, ...], group [N], slot in group [N], most rows
    per group)."""
    uniq, group = torch.unique(keys, dim=0, return_inverse=True)
    order = torch.argsort(group, stable=True)
    counts = torch.bincount(group, minlength=uniq.shape[0])
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.empty_like(group)
    slot[order] = torch.arange(group.numel()) - starts[group[order]]
    return uniq, group, slot, int(counts.max()) if counts.numel() else 0


def _scaled(t: torch.Tensor, scale: float) -> torch.Tensor:
    return t if scale == 1.0 else t * scale


class PagedAttention:
    """Static methods with IPEX's signatures (``ipex.llm.modules.PagedAttention``)."""

    @staticmethod
    def reshape_and_cache(
        key: torch.Tensor,
        value: torch.Tensor,
        key_cache: torch.Tensor,
        value_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
        kv_cache_dtype: str = "auto",
        k_scale: float = 1.0,
        v_scale: float = 1.0,
    ) -> None:
        """Write ``key``/``value`` [T, H, D] into the caches at ``slot_mapping`` [T] (slots < 0 skipped)."""
        _check_dtype(kv_cache_dtype)
        slots = slot_mapping.to(torch.int64)
        keep = slots >= 0
        if not bool(keep.all()):
            slots, key, value = slots[keep], key[keep], value[keep]
        bs = key_cache.shape[2]
        block, row = slots // bs, slots % bs
        key_cache[block, :, row] = key.to(key_cache.dtype)
        value_cache[block, :, row] = value.to(value_cache.dtype)

    @staticmethod
    def single_query_cached_kv_attention(
        output: torch.Tensor,
        query: torch.Tensor,
        key_cache: torch.Tensor,
        value_cache: torch.Tensor,
        head_mapping: torch.Tensor,
        scale: float,
        block_tables: torch.Tensor,
        context_lens: torch.Tensor,
        block_size: int,
        max_context_len: int,
        alibi_slopes: torch.Tensor | None,
        k_scale: float = 1.0,
        v_scale: float = 1.0,
    ) -> None:
        """Decode: each row of ``query`` [N, Hq, D] attends to the first ``context_lens[n]``
        cached tokens of its blocks ``block_tables[n]``; writes ``output`` [N, Hq, D]. TGI's
        speculative rows are N = B x (speculate + 1) single queries with growing lengths."""
        if alibi_slopes is not None:
            raise NotImplementedError("single_query_cached_kv_attention with ALiBi")
        if key_cache.shape[2] != block_size:
            raise ValueError(f"cache blocks hold {key_cache.shape[2]} tokens, block_size is {block_size}")
        hq, hkv = query.shape[1], key_cache.shape[1]
        expected = torch.arange(hkv).repeat_interleave(hq // hkv)
        if head_mapping.numel() != hq or not torch.equal(head_mapping.to(torch.int64).cpu(), expected):
            raise NotImplementedError("single_query_cached_kv_attention with a non-grouped head mapping")
        lens = context_lens.to(torch.int64)
        if lens.numel() == 0:
            return
        # one gather per request, not per speculative row: rows sharing a block table are
        # that request's queries at growing lengths
        nb = max(-(-int(lens.max()) // block_size), 1)
        tables, group, slot, width = _group_rows(block_tables[:, :nb])
        group_lens = torch.zeros(tables.shape[0], dtype=torch.int64).scatter_reduce_(0, group, lens, "amax")
        k = _scaled(_gather_blocks(key_cache, tables, group_lens), k_scale)  # [U, Hkv, L, D]
        v = _written(_scaled(_gather_blocks(value_cache, tables, group_lens), v_scale), group_lens)
        q = query.new_zeros((tables.shape[0], width) + query.shape[1:])
        q[group, slot] = query
        row_lens = torch.zeros(tables.shape[0], width, dtype=torch.int64)
        row_lens[group, slot] = lens
        allowed = torch.arange(k.shape[2])[None, None, :] < row_lens[:, :, None]  # [U, R, L]
        o = _grouped_attention(q.transpose(1, 2), k, v, allowed[:, None], scale)  # [U, Hq, R, D]
        output.copy_(o.transpose(1, 2)[group, slot].to(output.dtype))

    @staticmethod
    def flash_attn_varlen_func(
        output: torch.Tensor,
        query: torch.Tensor,
        key_cache: torch.Tensor,
        value_cache: torch.Tensor,
        cu_seqlens_q: torch.Tensor,
        cu_seqlens_kv: torch.Tensor,
        max_seqlen_q: int,
        max_seqlen_kv: int,
        scale: float,
        is_causal: bool,
        block_table: torch.Tensor,
        alibi_slopes: torch.Tensor | None = None,
        window_size_left: int = -1,
        window_size_right: int = -1,
        kv_cache_dtype: str = "auto",
        k_scale: float = 1.0,
        v_scale: float = 1.0,
        softcap: float = -1.0,
    ) -> None:
        """Varlen queries over a paged cache (``ATTENTION=flashdecoding-ipex``, prefill and
        decode): sequence b's queries ``cu_seqlens_q[b]:[b+1]`` attend to the first
        ``cu_seqlens_kv[b+1] - cu_seqlens_kv[b]`` tokens of its blocks ``block_table[b]``,
        causal aligned at the end, optionally windowed and soft-capped."""
        _check_dtype(kv_cache_dtype)
        if alibi_slopes is not None:
            raise NotImplementedError("flash_attn_varlen_func with ALiBi")
        cu_q, cu_k = cu_seqlens_q.to(torch.int64), cu_seqlens_kv.to(torch.int64)
        lq, lk = cu_q[1:] - cu_q[:-1], cu_k[1:] - cu_k[:-1]
        b = lq.numel()
        mq = int(lq.max()) if b else 0
        k = _scaled(_gather_blocks(key_cache, block_table, lk), k_scale)  # [B, Hkv, L, D]
        v = _written(_scaled(_gather_blocks(value_cache, block_table, lk), v_scale), lk)
        # queries padded to [B, Hq, mq, D]; padding rows are computed and dropped
        qi = torch.arange(mq)[None, :]
        valid = qi < lq[:, None]
        src = (cu_q[:-1, None] + qi).clamp(max=max(query.shape[0] - 1, 0))
        q = query[src].transpose(1, 2)
        kj = torch.arange(k.shape[2])[None, None, :]
        allowed = (kj < lk[:, None, None]).expand(b, mq, k.shape[2])  # [B, mq, L]
        last = qi[:, :, None] + (lk - lq)[:, None, None]  # the key aligned with query i
        if is_causal:
            allowed = allowed & (kj <= last)
        if window_size_left >= 0:
            allowed = allowed & (kj >= last - window_size_left)
        if window_size_right >= 0 and not is_causal:
            allowed = allowed & (kj <= last + window_size_right)
        if softcap > 0:
            raise NotImplementedError("flash_attn_varlen_func with softcap")
        o = _grouped_attention(q, k, v, allowed[:, None], scale).transpose(1, 2)  # [B, mq, Hq, D]
        output[src[valid]] = o[valid].to(output.dtype)

    reshape_and_cache_flash = staticmethod(missing("llm.modules.PagedAttention.reshape_and_cache_flash"))
