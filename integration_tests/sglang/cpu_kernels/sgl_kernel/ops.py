"""Pure-torch CPU implementations of the sgl_kernel ops SGLang's CPU engine calls.

Each op is registered with ``torch.library`` under the ``sgl_kernel`` namespace, with
the schema SGLang 0.5.23's call sites use; implementations are vectorised over the
batch (loops run over tree depth only). Test fixture: correctness over speed.
"""

from __future__ import annotations

import ctypes
import os

import numpy as np
import torch

LIB = torch.library.Library("sgl_kernel", "DEF")

SCHEMAS = {
    "assign_req_to_token_pool_cpu": "(Tensor req_pool_indices, Tensor(a!) req_to_token, Tensor start_offset, Tensor end_offset, "
    "Tensor out_cache_loc, int pool_len) -> ()",
    "assign_extend_cache_locs_cpu": "(Tensor req_pool_indices, Tensor req_to_token, Tensor start_offset, Tensor end_offset, "
    "Tensor(a!) out_cache_loc, int pool_len) -> ()",
    "copy_all_layer_kv_cache_cpu": "(Tensor data_ptrs, Tensor strides, Tensor tgt_loc, Tensor src_loc) -> ()",
    "verify_tree_greedy_cpu": "(Tensor(a!) predicts, Tensor(b!) accept_index, Tensor(c!) accept_token_num, Tensor candidates, "
    "Tensor retrive_index, Tensor retrive_next_token, Tensor retrive_next_sibling, "
    "Tensor target_predict) -> ()",
    "fill_accept_out_cache_loc_cpu": "(Tensor accept_index, Tensor out_cache_loc, Tensor(a!) accept_out_cache_loc) -> ()",
    "fill_bonus_tokens_cpu": "(Tensor accept_tokens, Tensor accept_lens, Tensor(a!) bonus_tokens, int accept_stride) -> ()",
    "reconstruct_indices_from_tree_mask": "(Tensor tree_mask, Tensor verified_seq_len, Tensor(a!) positions, Tensor(b!) retrive_index, "
    "Tensor(c!) retrive_next_token, Tensor(d!) retrive_next_sibling, int batch_size, "
    "int draft_token_num) -> ()",
    "decode_attention_cpu": "(Tensor query, Tensor(a!) k_cache, Tensor(b!) v_cache, float k_scale, float v_scale, "
    "Tensor(c!) output, Tensor? key, Tensor? value, Tensor loc, Tensor attn_logits, "
    "Tensor req_to_token, Tensor req_pool_indices, Tensor seq_lens, float sm_scale, "
    "float logit_cap, bool is_cross_attention, int sliding_window, Tensor? encoder_lens, "
    "Tensor? sinks) -> ()",
    "extend_attention_cpu": "(Tensor q_extend, Tensor? k_extend, Tensor? v_extend, Tensor(a!) o_extend, Tensor k_buffer, "
    "Tensor v_buffer, float k_scale, float v_scale, Tensor req_to_token, Tensor req_pool_indices, "
    "Tensor seq_lens, Tensor extend_seq_lens, Tensor extend_start_loc, int? max_len_extend, "
    "float sm_scale, float logit_cap, bool is_cross_attention, int sliding_window, "
    "Tensor? encoder_lens, Tensor? sinks, Tensor? tree_mask, bool is_causal) -> ()",
}


def _impl(name):
    def deco(fn):
        LIB.define(name + SCHEMAS[name])
        LIB.impl(name, fn, "CPU")
        return fn

    return deco


def _segments(start: torch.Tensor, end: torch.Tensor):
    """Row (batch index) and column (offset) of every element of the ranges [start, end)."""
    lens = (end - start).to(torch.int64)
    b = torch.repeat_interleave(torch.arange(lens.numel()), lens)
    first = torch.cumsum(lens, 0) - lens
    col = start.to(torch.int64)[b] + torch.arange(int(lens.sum())) - first[b]
    return b, col


# ------------------------------------------------------------------ KV bookkeeping
@_impl("assign_req_to_token_pool_cpu")
def assign_req_to_token_pool(req_pool_indices, req_to_token, start_offset, end_offset, out_cache_loc, pool_len):
    b, col = _segments(start_offset, end_offset)
    req_to_token[req_pool_indices.to(torch.int64)[b], col] = out_cache_loc[: b.numel()].to(req_to_token.dtype)


@_impl("assign_extend_cache_locs_cpu")
def assign_extend_cache_locs(req_pool_indices, req_to_token, start_offset, end_offset, out_cache_loc, pool_len):
    b, col = _segments(start_offset, end_offset)
    out_cache_loc[: b.numel()] = req_to_token[req_pool_indices.to(torch.int64)[b], col].to(out_cache_loc.dtype)


@_impl("copy_all_layer_kv_cache_cpu")
def copy_all_layer_kv_cache(data_ptrs, strides, tgt_loc, src_loc):
    """Copy KV rows src -> tgt in every buffer (given by raw address and row stride in bytes)."""
    if tgt_loc.numel() == 0:
        return
    tgt = tgt_loc.to(torch.int64).numpy()
    src = src_loc.to(torch.int64).numpy()
    rows = int(max(tgt.max(), src.max())) + 1
    for ptr, stride in zip(data_ptrs.tolist(), strides.tolist()):
        buf = (ctypes.c_uint8 * (rows * int(stride))).from_address(int(ptr))
        arr = np.ctypeslib.as_array(buf).reshape(rows, int(stride))
        arr[tgt] = arr[src]  # fancy indexing on the right copies first: in-place safe


# ------------------------------------------------------------------ speculative verify
@_impl("verify_tree_greedy_cpu")
def verify_tree_greedy(
    predicts,
    accept_index,
    accept_token_num,
    candidates,
    retrive_index,
    retrive_next_token,
    retrive_next_sibling,
    target_predict,
):
    """Greedy tree walk: from the root, enter the first child (sibling order) whose token is
    the target's prediction at the current node; stop where none matches."""
    bs, n = candidates.shape
    depth_cap = accept_index.shape[1]
    nxt = retrive_next_token.to(torch.int64)
    sib = retrive_next_sibling.to(torch.int64)
    rows = torch.arange(bs)
    # parent and sibling rank of every node, from the first-child / next-sibling links
    parent = torch.full((bs, n), -1, dtype=torch.int64)
    rank = torch.zeros((bs, n), dtype=torch.int64)
    has_child = nxt >= 0
    bi, pi = has_child.nonzero(as_tuple=True)
    parent[bi, nxt[bi, pi]] = pi
    frontier = nxt.clone()  # walk each sibling chain one link per pass
    cur_rank = 0
    while True:
        live = frontier >= 0
        bb, pp = live.nonzero(as_tuple=True)
        nodes = sib[bb, frontier[bb, pp]]
        ok = nodes >= 0
        if not bool(ok.any()):
            break
        cur_rank += 1
        parent[bb[ok], nodes[ok]] = pp[ok]
        rank[bb[ok], nodes[ok]] = cur_rank
        frontier[:] = -1
        frontier[bb[ok], pp[ok]] = nodes[ok]
    flat_target = target_predict.reshape(-1).to(torch.int64)
    gidx = retrive_index.to(torch.int64)
    # a node matches when its token is the target's prediction at its parent
    par_g = gidx[rows[:, None], parent.clamp(min=0)]
    match = (parent >= 0) & (candidates.to(torch.int64) == flat_target[par_g])
    cur = torch.zeros(bs, dtype=torch.int64)
    alive = torch.ones(bs, dtype=torch.bool)
    count = torch.zeros(bs, dtype=torch.int64)
    accept_index[:, 0] = gidx[:, 0].to(accept_index.dtype)
    big = n + 1
    for j in range(1, depth_cap):
        cand = match & (parent == cur[:, None]) & alive[:, None]
        key = torch.where(cand, rank, torch.full_like(rank, big))
        best_rank, best = key.min(dim=1)
        found = best_rank < big
        if not bool(found.any()):
            break
        fr = rows[found]
        last_g = gidx[fr, cur[fr]]
        predicts[last_g] = flat_target[last_g].to(predicts.dtype)
        accept_index[fr, j] = gidx[fr, best[fr]].to(accept_index.dtype)
        cur = torch.where(found, best, cur)
        count += found.to(torch.int64)
        alive &= found
    last_g = gidx[rows, cur]
    predicts[last_g] = flat_target[last_g].to(predicts.dtype)
    accept_token_num.copy_(count.to(accept_token_num.dtype))


@_impl("fill_accept_out_cache_loc_cpu")
def fill_accept_out_cache_loc(accept_index, out_cache_loc, accept_out_cache_loc):
    idx = accept_index.reshape(-1).to(torch.int64)
    idx = idx[idx >= 0]
    accept_out_cache_loc[: idx.numel()] = out_cache_loc[idx].to(accept_out_cache_loc.dtype)


@_impl("fill_bonus_tokens_cpu")
def fill_bonus_tokens(accept_tokens, accept_lens, bonus_tokens, accept_stride):
    bs = accept_lens.numel()
    pos = torch.arange(bs) * accept_stride + accept_lens.to(torch.int64) - 1
    bonus_tokens[:bs] = accept_tokens.reshape(-1)[pos].to(bonus_tokens.dtype)


@_impl("reconstruct_indices_from_tree_mask")
def reconstruct_indices_from_tree_mask(
    tree_mask,
    verified_seq_len,
    positions,
    retrive_index,
    retrive_next_token,
    retrive_next_sibling,
    batch_size,
    draft_token_num,
):
    """Positions (depth + committed length) and first-child / next-sibling links of each
    tree from its ancestor mask (``mask[b, i, j]``: j is i or an ancestor of i)."""
    bs, n = int(batch_size), int(draft_token_num)
    if bs == 0:
        return
    m = tree_mask[: bs * n * n].reshape(bs, n, n).to(torch.bool)
    idx = torch.arange(n)
    anc = m & (idx[None, None, :] < idx[None, :, None])  # strict ancestors j < i
    positions.view(-1)[: bs * n] = (
        (anc.sum(-1) + verified_seq_len[:bs, None].to(torch.int64)).reshape(-1).to(positions.dtype)
    )
    retrive_index.view(bs, n)[:] = (torch.arange(bs)[:, None] * n + idx[None, :]).to(retrive_index.dtype)
    parent = torch.where(anc.any(-1), (anc * idx).amax(-1), torch.full((bs, n), -1))
    big = n
    # first child of t: smallest k > t with t an ancestor of k
    desc = anc.transpose(1, 2)  # desc[b, t, k] = t is a strict ancestor of k
    first = torch.where(desc, idx[None, None, :], torch.full_like(desc, big, dtype=torch.int64)).amin(-1)
    retrive_next_token.view(bs, n)[:] = torch.where(first < big, first, torch.full_like(first, -1)).to(
        retrive_next_token.dtype
    )
    same = (parent[:, :, None] == parent[:, None, :]) & (idx[None, None, :] > idx[None, :, None])
    nsib = torch.where(same, idx[None, None, :], torch.full_like(same, big, dtype=torch.int64)).amin(-1)
    nsib = torch.where((nsib < big) & (parent >= 0), nsib, torch.full_like(nsib, -1))
    retrive_next_sibling.view(bs, n)[:] = nsib.to(retrive_next_sibling.dtype)


# ------------------------------------------------------------------ attention
def _check_supported(is_cross_attention, encoder_lens):
    if is_cross_attention or encoder_lens is not None:
        raise NotImplementedError("cross attention is not implemented by the CPU test kernels")


def _softmax_attend(q, k, v, allowed, sm_scale, logit_cap, sinks):
    """q [B, Q, H, D], k/v [B, K, Hkv, D*], allowed [B, Q, K] (or [B, Q, H, K]) -> [B, Q, H, Dv]."""
    B, Q, H, D = q.shape
    hkv = k.shape[2]
    g = H // hkv
    kk = k.float().repeat_interleave(g, dim=2)
    vv = v.float().repeat_interleave(g, dim=2)
    s = torch.einsum("bqhd,bkhd->bhqk", q.float(), kk) * sm_scale
    if logit_cap and logit_cap > 0:
        s = logit_cap * torch.tanh(s / logit_cap)
    s = s.masked_fill(~allowed[:, None, :, :], float("-inf"))
    if sinks is not None:
        sink = sinks.float().reshape(1, H, 1, 1).expand(B, H, Q, 1)
        s = torch.cat([s, sink], dim=-1)
        p = torch.softmax(s, dim=-1)[..., :-1]
    else:
        p = torch.softmax(s, dim=-1)
    p = torch.nan_to_num(p)  # rows with nothing visible (padding queries)
    return torch.einsum("bhqk,bkhd->bqhd", p, vv)


def _gather_kv(buf, scale, req_to_token, rpi, lens):
    """Buffer rows of each request's first ``lens`` tokens, padded: [B, L, Hkv, D], valid [B, L]."""
    L = int(lens.max()) if lens.numel() else 0
    cols = torch.arange(L)
    valid = cols[None, :] < lens[:, None]
    locs = req_to_token[rpi.to(torch.int64)[:, None], cols[None, :].clamp(max=req_to_token.shape[1] - 1)]
    locs = torch.where(valid, locs.to(torch.int64), torch.zeros_like(locs, dtype=torch.int64))
    out = buf[locs].float()
    if scale != 1.0:
        out = out * scale
    return out, valid


@_impl("decode_attention_cpu")
def decode_attention(
    query,
    k_cache,
    v_cache,
    k_scale,
    v_scale,
    output,
    key,
    value,
    loc,
    attn_logits,
    req_to_token,
    req_pool_indices,
    seq_lens,
    sm_scale,
    logit_cap,
    is_cross_attention,
    sliding_window,
    encoder_lens,
    sinks,
):
    _check_supported(is_cross_attention, encoder_lens)
    if key is not None:
        k_cache[loc.to(torch.int64)] = key.to(k_cache.dtype)
        v_cache[loc.to(torch.int64)] = value.to(v_cache.dtype)
    lens = seq_lens.to(torch.int64)
    k, valid = _gather_kv(k_cache, k_scale, req_to_token, req_pool_indices, lens)
    v, _ = _gather_kv(v_cache, v_scale, req_to_token, req_pool_indices, lens)
    allowed = valid
    if sliding_window and sliding_window > 0:
        pos = torch.arange(valid.shape[1])[None, :]
        allowed = allowed & ((lens[:, None] - 1 - pos) < sliding_window)
    B, H = query.shape[0], query.shape[1]
    o = _softmax_attend(query.reshape(B, 1, H, -1), k, v, allowed[:, None, :], sm_scale, logit_cap, sinks)
    output.copy_(o.reshape(output.shape).to(output.dtype))


@_impl("extend_attention_cpu")
def extend_attention(
    q_extend,
    k_extend,
    v_extend,
    o_extend,
    k_buffer,
    v_buffer,
    k_scale,
    v_scale,
    req_to_token,
    req_pool_indices,
    seq_lens,
    extend_seq_lens,
    extend_start_loc,
    max_len_extend,
    sm_scale,
    logit_cap,
    is_cross_attention,
    sliding_window,
    encoder_lens,
    sinks,
    tree_mask,
    is_causal,
):
    """Each request's extend queries attend to its cached prefix and to its extend tokens:
    causally, or through ``tree_mask`` ([e x e] per request, or [e x seq_len] rows)."""
    _check_supported(is_cross_attention, encoder_lens)
    if tree_mask is not None and os.environ.get("SPECPLUG_CPU_KERNELS_BREAK_TREE_MASK") == "1":
        tree_mask = None  # negative control for the engine tests: plain causal attention
    B = seq_lens.numel()
    T = q_extend.shape[0]
    if B == 0 or T == 0:
        return
    ext = extend_seq_lens.to(torch.int64)
    total = seq_lens.to(torch.int64)
    pre = total - ext
    E = int(ext.max())
    P = int(pre.max())
    qi = torch.arange(E)
    qvalid = qi[None, :] < ext[:, None]
    rows = (extend_start_loc.to(torch.int64)[:, None] + qi[None, :]).clamp(max=T - 1)
    q = q_extend[rows]  # [B, E, H, D]
    kp, pvalid = (
        _gather_kv(k_buffer, k_scale, req_to_token, req_pool_indices, pre)
        if P
        else (k_buffer.new_zeros((B, 0) + tuple(k_buffer.shape[1:])).float(), torch.zeros((B, 0), dtype=torch.bool))
    )
    vp, _ = (
        _gather_kv(v_buffer, v_scale, req_to_token, req_pool_indices, pre)
        if P
        else (v_buffer.new_zeros((B, 0) + tuple(v_buffer.shape[1:])).float(), None)
    )
    if k_extend is not None:
        ke, ve = k_extend[rows].float(), v_extend[rows].float()
    else:  # shared-KV layers: the extend tokens' KV is already in the cache
        locs = req_to_token[
            req_pool_indices.to(torch.int64)[:, None], (pre[:, None] + qi[None, :]).clamp(max=req_to_token.shape[1] - 1)
        ].to(torch.int64)
        ke = k_buffer[locs].float() * k_scale
        ve = v_buffer[locs].float() * v_scale
    k = torch.cat([kp, ke], dim=1)
    v = torch.cat([vp, ve], dim=1)
    # visibility of extend keys to extend queries [B, E, E]
    if tree_mask is not None:
        tm = tree_mask.reshape(-1).to(torch.bool)
        if tm.numel() == int((ext * ext).sum()):
            b, i, j = _square_index(ext, E)
            ee = torch.zeros((B, E, E), dtype=torch.bool)
            ee[b, i, j] = tm
            pre_vis = torch.ones((B, E, 1), dtype=torch.bool)
        elif tm.numel() == int((ext * total).sum()):
            b, i, j = _rect_index(ext, total)
            full = torch.zeros((B, E, int(total.max())), dtype=torch.bool)
            full[b, i, j] = tm
            cols = torch.arange(E)
            ee = full.gather(2, (pre[:, None, None] + cols[None, None, :]).clamp(max=full.shape[2] - 1).expand(B, E, E))
            pre_vis = full[:, :, :P] if P else torch.ones((B, E, 0), dtype=torch.bool)
        else:
            raise ValueError(
                f"tree_mask has {tm.numel()} elements; expected sum(e*e)="
                f"{int((ext * ext).sum())} or sum(e*seq_len)={int((ext * total).sum())}"
            )
    elif is_causal:
        ee = (qi[None, :, None] >= qi[None, None, :]).expand(B, E, E)
        pre_vis = torch.ones((B, E, 1), dtype=torch.bool)
    else:
        ee = torch.ones((B, E, E), dtype=torch.bool)
        pre_vis = torch.ones((B, E, 1), dtype=torch.bool)
    allowed_pre = (
        pvalid[:, None, :] & pre_vis[:, :, : pvalid.shape[1]]
        if pre_vis.shape[2] != 1
        else pvalid[:, None, :].expand(B, E, pvalid.shape[1])
    )
    allowed_ext = ee & qvalid[:, None, :] & qvalid[:, :, None]
    allowed = torch.cat([allowed_pre, allowed_ext], dim=2)
    if sliding_window and sliding_window > 0:
        qpos = pre[:, None] + qi[None, :]  # [B, E]
        kpos = torch.cat(
            [torch.arange(kp.shape[1])[None, :].expand(B, -1), pre[:, None] + qi[None, :]], dim=1
        )  # [B, P + E]
        allowed = allowed & ((qpos[:, :, None] - kpos[:, None, :]) < sliding_window)
    o = _softmax_attend(q, k, v, allowed, sm_scale, logit_cap, sinks)  # [B, E, H, Dv]
    o_extend[rows[qvalid]] = o[qvalid].to(o_extend.dtype)


def _square_index(ext, E):
    b = torch.repeat_interleave(torch.arange(ext.numel()), ext * ext)
    first = torch.cumsum(ext * ext, 0) - ext * ext
    off = torch.arange(int((ext * ext).sum())) - first[b]
    return b, off // ext[b], off % ext[b]


def _rect_index(ext, total):
    b = torch.repeat_interleave(torch.arange(ext.numel()), ext * total)
    first = torch.cumsum(ext * total, 0) - ext * total
    off = torch.arange(int((ext * total).sum())) - first[b]
    return b, off // total[b], off % total[b]
