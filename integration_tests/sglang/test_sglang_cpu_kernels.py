"""Tests of the pure-torch sgl_kernel stand-in (integration_tests/sglang/cpu_kernels).

Each op is checked against a direct per-request reference written from its contract;
they run without SGLang. The attention ops are the ones SGLang's intel_amx backend
calls for prefill, decode and tree verification.
"""

from __future__ import annotations

import math
import pathlib
import sys

import numpy as np
import pytest
import torch

HERE = pathlib.Path(__file__).resolve().parent
KERNELS = HERE / "cpu_kernels"


@pytest.fixture(scope="module")
def sk():
    try:
        import sgl_kernel  # noqa: F401

        if not getattr(sgl_kernel, "IS_STAND_IN", False):
            pytest.skip("a real sgl_kernel is installed; the stand-in is not loaded over it")
    except ImportError:
        sys.path.insert(0, str(KERNELS))
        import sgl_kernel
    return sgl_kernel


def ops():
    return torch.ops.sgl_kernel


# ------------------------------------------------------------------ bookkeeping ops
def test_assign_req_to_token_pool_and_extend_cache_locs_roundtrip(sk):
    req_to_token = torch.zeros((4, 32), dtype=torch.int32)
    rpi = torch.tensor([2, 0, 3])
    start = torch.tensor([0, 5, 3])
    end = torch.tensor([4, 7, 6])
    locs = torch.arange(100, 109, dtype=torch.int64)
    sk.assign_req_to_token_pool_cpu(rpi, req_to_token, start, end, locs, 32)
    assert req_to_token[2, :4].tolist() == [100, 101, 102, 103]
    assert req_to_token[0, 5:7].tolist() == [104, 105]
    assert req_to_token[3, 3:6].tolist() == [106, 107, 108]
    assert int(req_to_token.sum()) == sum(range(100, 109))
    out = torch.empty(9, dtype=torch.int64)
    sk.assign_extend_cache_locs_cpu(rpi, req_to_token, start, end, out, 32)
    assert out.tolist() == locs.tolist()


def test_copy_all_layer_kv_cache_by_address(sk):
    bufs = [torch.arange(40, dtype=torch.float32).reshape(10, 4), torch.arange(30, dtype=torch.int16).reshape(10, 3)]
    before = [b.clone() for b in bufs]
    ptrs = torch.tensor([b.data_ptr() for b in bufs], dtype=torch.uint64)
    strides = torch.tensor([b.stride(0) * b.element_size() for b in bufs], dtype=torch.int64)
    sk.copy_all_layer_kv_cache_cpu(ptrs, strides, torch.tensor([1, 7]), torch.tensor([7, 2]))
    for b, o in zip(bufs, before):
        assert torch.equal(b[1], o[7]) and torch.equal(b[7], o[2])  # swap-safe: reads before writes
        assert torch.equal(b[0], o[0]) and torch.equal(b[2], o[2])


def test_fill_bonus_and_accept_out_cache_loc(sk):
    accept_tokens = torch.tensor([[5, 6, 7], [8, 9, 0]], dtype=torch.int32)
    bonus = torch.zeros(2, dtype=torch.int64)
    sk.fill_bonus_tokens_cpu(accept_tokens, torch.tensor([3, 1]), bonus, 3)
    assert bonus.tolist() == [7, 8]
    accept_index = torch.tensor([[0, 2, -1], [3, -1, -1]], dtype=torch.int32)
    out_cache = torch.tensor([10, 11, 12, 13, 14, 15])
    acc = torch.full((6,), -1)
    sk.fill_accept_out_cache_loc_cpu(accept_index, out_cache, acc)
    assert acc[:3].tolist() == [10, 12, 13]


def _tree_mask(parents):
    n = len(parents)
    m = np.eye(n, dtype=bool)
    for i in range(n):
        p = parents[i]
        while p >= 0:
            m[i, p] = True
            p = parents[p]
    return m


def test_reconstruct_indices_from_tree_mask(sk):
    trees = [[-1, 0, 0, 1, 1, 2], [-1, 0, 1, 2, -1, -1]]  # second: chain + 2 padding nodes
    n = 6
    mask = torch.from_numpy(np.stack([_tree_mask(p) for p in trees]).reshape(-1))
    seq = torch.tensor([10, 20])
    pos = torch.empty(2 * n, dtype=torch.int64)
    ri, nt, ns = (torch.empty((2, n), dtype=torch.int64) for _ in range(3))
    sk.speculative.reconstruct_indices_from_tree_mask(mask, seq, pos, ri, nt, ns, 2, n)
    assert pos.tolist() == [10, 11, 11, 12, 12, 12, 20, 21, 22, 23, 20, 20]
    assert ri.tolist() == [list(range(6)), list(range(6, 12))]
    assert nt.tolist() == [[1, 3, 5, -1, -1, -1], [1, 2, 3, -1, -1, -1]]
    assert ns.tolist() == [[-1, 2, -1, 4, -1, -1], [-1, -1, -1, -1, -1, -1]]


def _reference_greedy(cands, nt, ns, target):
    """Straight per-request walk of the tree (the op's contract)."""
    out = []
    for b in range(len(cands)):
        cur, path = 0, [0]
        while True:
            want = target[b][cur]
            c = nt[b][cur]
            while c != -1 and cands[b][c] != want:
                c = ns[b][c]
            if c == -1:
                break
            path.append(c)
            cur = c
        out.append(path)
    return out


@pytest.mark.parametrize("seed", range(5))
def test_verify_tree_greedy_matches_reference_walk(sk, seed):
    rng = np.random.default_rng(seed)
    bs, n, vocab = 3, 8, 4  # tiny vocab: many matches, duplicate sibling tokens allowed
    parents = []
    for _ in range(bs):
        p = [-1] + [int(rng.integers(0, i)) for i in range(1, n)]
        parents.append(p)
    mask = torch.from_numpy(np.stack([_tree_mask(p) for p in parents]).reshape(-1))
    pos = torch.empty(bs * n, dtype=torch.int64)
    ri, nt, ns = (torch.empty((bs, n), dtype=torch.int64) for _ in range(3))
    sk.speculative.reconstruct_indices_from_tree_mask(mask, torch.zeros(bs, dtype=torch.int64), pos, ri, nt, ns, bs, n)
    cands = torch.from_numpy(rng.integers(0, vocab, (bs, n)))
    target = torch.from_numpy(rng.integers(0, vocab, (bs, n)))
    predicts = torch.zeros(bs * n, dtype=torch.int32)
    accept_index = torch.full((bs, n), -1, dtype=torch.int32)
    num = torch.empty(bs, dtype=torch.int32)
    sk.verify_tree_greedy_cpu(
        predicts=predicts,
        accept_index=accept_index,
        accept_token_num=num,
        candidates=cands,
        retrive_index=ri,
        retrive_next_token=nt,
        retrive_next_sibling=ns,
        target_predict=target,
    )
    ref = _reference_greedy(cands.tolist(), nt.tolist(), ns.tolist(), target.tolist())
    for b in range(bs):
        path = ref[b]
        assert num[b].item() == len(path) - 1
        assert accept_index[b, : len(path)].tolist() == [b * n + i for i in path]
        assert (accept_index[b, len(path) :] == -1).all()
        for node in path:  # predict at each accepted node = target there
            assert predicts[b * n + node].item() == target[b, node].item()


# ------------------------------------------------------------------ attention
def _ref_attention(q, k, v, allowed, scale):
    """q [Q, H, D], k/v [K, Hkv, D], allowed [Q, K] -> [Q, H, D]."""
    g = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(g, 1)
    v = v.repeat_interleave(g, 1)
    s = torch.einsum("qhd,khd->hqk", q.double(), k.double()) * scale
    s = s.masked_fill(~allowed[None], -math.inf)
    return torch.einsum("hqk,khd->qhd", torch.softmax(s, -1), v.double())


def _setup_cache(rng, bs, lens, hkv, d, pool=64):
    k_buf = torch.from_numpy(rng.standard_normal((pool, hkv, d)).astype(np.float32))
    v_buf = torch.from_numpy(rng.standard_normal((pool, hkv, d)).astype(np.float32))
    req_to_token = torch.zeros((bs + 1, 32), dtype=torch.int32)
    perm = rng.permutation(pool)[: sum(lens)]
    off = 0
    for b, n in enumerate(lens):
        req_to_token[b + 1, :n] = torch.from_numpy(perm[off : off + n].astype(np.int32))
        off += n
    return k_buf, v_buf, req_to_token, torch.arange(1, bs + 1)


@pytest.mark.parametrize("use_tree", [False, True])
def test_extend_attention_prefix_plus_causal_or_tree(sk, use_tree):
    rng = np.random.default_rng(0)
    H, hkv, d = 4, 2, 8
    pre, ext = [3, 5], [4, 2]
    total = [p + e for p, e in zip(pre, ext)]
    k_buf, v_buf, r2t, rpi = _setup_cache(rng, 2, total, hkv, d)
    T = sum(ext)
    q = torch.from_numpy(rng.standard_normal((T, H, d)).astype(np.float32))
    k_ext = torch.cat([k_buf[r2t[b + 1, pre[b] : total[b]].long()] for b in range(2)])
    v_ext = torch.cat([v_buf[r2t[b + 1, pre[b] : total[b]].long()] for b in range(2)])
    masks = [_tree_mask([-1, 0, 0, 1]), _tree_mask([-1, 0])] if use_tree else None
    tree = torch.from_numpy(np.concatenate([m.reshape(-1) for m in masks])) if use_tree else None
    o = torch.zeros_like(q)
    ops().extend_attention_cpu(
        q,
        k_ext,
        v_ext,
        o,
        k_buf,
        v_buf,
        1.0,
        1.0,
        r2t,
        rpi,
        torch.tensor(total),
        torch.tensor(ext, dtype=torch.int32),
        torch.tensor([0, ext[0]], dtype=torch.int32),
        max(ext),
        0.3,
        0.0,
        False,
        0,
        None,
        None,
        tree,
        True,
    )
    start = 0
    for b in range(2):
        keys = r2t[b + 1, : total[b]].long()
        allowed = torch.ones((ext[b], total[b]), dtype=torch.bool)
        vis = torch.from_numpy(masks[b]) if use_tree else torch.tril(torch.ones(ext[b], ext[b], dtype=torch.bool))
        allowed[:, pre[b] :] = vis
        ref = _ref_attention(q[start : start + ext[b]], k_buf[keys], v_buf[keys], allowed, 0.3)
        assert torch.allclose(o[start : start + ext[b]].double(), ref, atol=1e-5)
        start += ext[b]


def test_extend_attention_rejects_misshaped_tree_mask(sk):
    q = torch.zeros((2, 2, 4))
    with pytest.raises(Exception, match="tree_mask"):
        ops().extend_attention_cpu(
            q,
            q[:, :1],
            q[:, :1],
            torch.zeros_like(q),
            torch.zeros((8, 1, 4)),
            torch.zeros((8, 1, 4)),
            1.0,
            1.0,
            torch.zeros((2, 8), dtype=torch.int32),
            torch.tensor([1]),
            torch.tensor([2]),
            torch.tensor([2]),
            torch.tensor([0]),
            2,
            1.0,
            0.0,
            False,
            0,
            None,
            None,
            torch.ones(3, dtype=torch.bool),
            True,
        )


def test_decode_attention_writes_kv_then_attends(sk):
    rng = np.random.default_rng(1)
    H, hkv, d = 4, 2, 8
    lens = [5, 3]
    k_buf, v_buf, r2t, rpi = _setup_cache(rng, 2, lens, hkv, d)
    q = torch.from_numpy(rng.standard_normal((2, H, d)).astype(np.float32))
    k_new = torch.from_numpy(rng.standard_normal((2, hkv, d)).astype(np.float32))
    v_new = torch.from_numpy(rng.standard_normal((2, hkv, d)).astype(np.float32))
    loc = torch.stack([r2t[b + 1, lens[b] - 1] for b in range(2)]).long()
    o = torch.zeros_like(q)
    ops().decode_attention_cpu(
        q,
        k_buf,
        v_buf,
        1.0,
        1.0,
        o,
        k_new,
        v_new,
        loc,
        torch.zeros((2, H, 8, d + 1)),
        r2t,
        rpi,
        torch.tensor(lens),
        0.5,
        0.0,
        False,
        0,
        None,
        None,
    )
    assert torch.equal(k_buf[loc], k_new) and torch.equal(v_buf[loc], v_new)
    for b in range(2):
        keys = r2t[b + 1, : lens[b]].long()
        ref = _ref_attention(q[b : b + 1], k_buf[keys], v_buf[keys], torch.ones((1, lens[b]), dtype=torch.bool), 0.5)
        assert torch.allclose(o[b : b + 1].double(), ref, atol=1e-5)


def test_unimplemented_names_raise_clearly(sk):
    with pytest.raises(NotImplementedError, match="build_tree_kernel_efficient_cpu"):
        sk.build_tree_kernel_efficient_cpu()
    assert not hasattr(torch.ops.sgl_kernel, "convert_weight_packed")  # keeps AMX layer paths off
