"""The CPU stand-in for IPEX (``ipex_cpu/``) against direct per-sequence references.

Pure torch, no TGI: these run in CI. Each reference is written from the op's contract
one sequence (or token) at a time; the stand-in computes the whole batch at once.
"""

from __future__ import annotations

import math
import pathlib
import sys

import pytest
import torch

HERE = pathlib.Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def ipex():
    try:
        import intel_extension_for_pytorch as mod

        if not getattr(mod, "IS_STAND_IN", False):
            pytest.skip("the real intel_extension_for_pytorch is installed; the stand-in is not loaded over it")
    except ImportError:
        sys.path.insert(0, str(HERE / "ipex_cpu"))
        import intel_extension_for_pytorch as mod
    return mod


def _close(got: torch.Tensor, ref: torch.Tensor) -> None:
    """fp32 computation against the fp64 reference."""
    torch.testing.assert_close(got.double(), ref, atol=1e-5, rtol=1e-5)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _ref_attention(q, k, v, scale, allowed):
    """One sequence: q [Tq, Hq, D], k/v [Tk, Hkv, D], allowed [Tq, Tk] -> [Tq, Hq, D]."""
    g = q.shape[1] // k.shape[1]
    out = torch.zeros_like(q, dtype=torch.float64)
    for h in range(q.shape[1]):
        kh, vh = k[:, h // g].double(), v[:, h // g].double()
        for i in range(q.shape[0]):
            keys = torch.nonzero(allowed[i]).flatten()
            if keys.numel() == 0:
                continue
            w = torch.softmax((kh[keys] @ q[i, h].double()) * scale, 0)
            out[i, h] = w @ vh[keys]
    return out


# ------------------------------------------------------------------ functional
@pytest.mark.parametrize("with_residual", [False, True])
def test_add_rms_norm_matches_reference_and_updates_residual(ipex, with_residual):
    g = _gen(1)
    x = torch.randn(7, 32, generator=g)
    res = torch.randn(7, 32, generator=g) if with_residual else None
    w = torch.randn(32, generator=g)
    s = x + res if with_residual else x
    ref = w * (s / torch.sqrt(s.pow(2).mean(-1, keepdim=True) + 1e-5))
    res_in = None if res is None else res.clone()
    out = ipex.llm.functional.add_rms_norm(res_in, x, w, None, 1e-5, with_residual)
    torch.testing.assert_close(out, ref)
    if with_residual:
        torch.testing.assert_close(res_in, s)  # the next layer's residual


@pytest.mark.parametrize("half", [True, False])
def test_rotary_embedding_in_place_on_strided_key(ipex, half):
    g = _gen(2)
    t, hq, hkv, d = 5, 4, 2, 16
    q = torch.randn(t, hq, d, generator=g)
    kv = torch.randn(t, 2, hkv, d, generator=g)
    key = torch.select(kv, 1, 0)  # a strided view, as TGI passes it
    pos = torch.tensor([0, 3, 4, 9, 17])
    inv = 1.0 / (10000 ** (torch.arange(0, d, 2).float() / d))
    freqs = pos[:, None].float() * inv[None, :]
    cos, sin = freqs.cos()[:, None, :], freqs.sin()[:, None, :]

    def ref(x):
        out = x.clone()
        for i in range(t):
            for j in range(d // 2):
                a, b = (j, j + d // 2) if half else (2 * j, 2 * j + 1)
                c, s = math.cos(freqs[i, j]), math.sin(freqs[i, j])
                out[i, :, a] = x[i, :, a] * c - x[i, :, b] * s
                out[i, :, b] = x[i, :, b] * c + x[i, :, a] * s
        return out

    rq, rk = ref(q), ref(key.clone())
    value_before = kv[:, 1].clone()
    ipex.llm.functional.rotary_embedding(q, key, sin, cos, d, half)
    torch.testing.assert_close(q, rq)
    torch.testing.assert_close(kv[:, 0], rk)  # written through the view
    torch.testing.assert_close(kv[:, 1], value_before)  # values untouched


def test_varlen_attention_matches_per_sequence_causal_reference(ipex):
    g = _gen(3)
    lens = [3, 1, 6]
    hq, hkv, d = 4, 2, 8
    tot = sum(lens)
    q, k, v = (torch.randn(tot, h, d, generator=g) for h in (hq, hkv, hkv))
    cu = torch.tensor([0, 3, 4, 10], dtype=torch.int32)
    out = torch.empty_like(q)
    ipex.llm.functional.varlen_attention(q, k, v, out, cu, cu, 6, 6, 0.0, 0.3, False, True, False, None)
    for b, n in enumerate(lens):
        s = slice(int(cu[b]), int(cu[b + 1]))
        causal = torch.tril(torch.ones(n, n, dtype=torch.bool))
        _close(out[s], _ref_attention(q[s], k[s], v[s], 0.3, causal))


# ------------------------------------------------------------------ paged cache
def _paged(g, blocks=12, hkv=2, bs=4, d=8):
    kc = torch.randn(blocks, hkv, bs, d, generator=g)
    vc = torch.randn(blocks, hkv, bs, d, generator=g)
    return kc, vc


def test_reshape_and_cache_writes_each_slot(ipex):
    g = _gen(4)
    kc, vc = _paged(g)
    k0, v0 = kc.clone(), vc.clone()
    slots = torch.tensor([5, 6, 17, 40, -1])
    key, value = torch.randn(5, 2, 8, generator=g), torch.randn(5, 2, 8, generator=g)
    ipex.llm.modules.PagedAttention.reshape_and_cache(key, value, kc, vc, slots)
    for i, s in enumerate(slots.tolist()):
        if s < 0:
            continue
        k0[s // 4, :, s % 4], v0[s // 4, :, s % 4] = key[i], value[i]
    torch.testing.assert_close(kc, k0)  # the -1 slot wrote nothing
    torch.testing.assert_close(vc, v0)


def _cached(kc, vc, blocks, n):
    """The first ``n`` cached tokens of a sequence with ``blocks``: [n, H, D] each."""
    bs = kc.shape[2]
    idx = [(blocks[j // bs], j % bs) for j in range(n)]
    return (torch.stack([c[b, :, r] for b, r in idx]) for c in (kc, vc))


def test_single_query_cached_kv_attention_speculative_rows(ipex):
    g = _gen(5)
    kc, vc = _paged(g)
    hq, d = 4, 8
    # two requests x (speculate 2 + 1) rows: the block table repeated, lengths growing
    # columns past a row's own blocks are padding (torch.empty in TGI): any value
    pad = -(2**30)
    tables = torch.tensor(
        [[3, 7, 1], [3, 7, 1], [3, 7, 1], [9, pad, pad], [9, pad, pad], [9, pad, pad]], dtype=torch.int32
    )
    lens = torch.tensor([5, 6, 7, 2, 3, 4], dtype=torch.int32)
    q = torch.randn(6, hq, d, generator=g)
    out = torch.empty_like(q)
    kc[7, :, 3] = vc[7, :, 3] = kc[[1, 2, 0]] = vc[[1, 2, 0]] = float("nan")  # never written (torch.empty)
    mapping = torch.arange(2).repeat_interleave(2).to(torch.int32)
    ipex.llm.modules.PagedAttention.single_query_cached_kv_attention(
        out, q, kc, vc, mapping, 0.5, tables, lens, 4, 7, None
    )
    for n in range(6):
        k, v = _cached(kc, vc, tables[n].tolist(), int(lens[n]))
        ref = _ref_attention(q[n : n + 1], k, v, 0.5, torch.ones(1, int(lens[n]), dtype=torch.bool))
        _close(out[n : n + 1], ref)


@pytest.mark.parametrize("window", [-1, 2])
def test_flash_attn_varlen_func_prefill_and_decode_over_the_cache(ipex, window):
    g = _gen(6)
    kc, vc = _paged(g)
    hq, d = 4, 8
    qlens, klens = [3, 1, 2], [5, 7, 2]  # queries are the last tokens of each sequence
    tables = torch.tensor([[3, 7], [9, 2], [4, 2**30]], dtype=torch.int32)  # [4, pad]: padding
    cu_q = torch.tensor([0, 3, 4, 6], dtype=torch.int32)
    cu_k = torch.tensor([0, 5, 12, 14], dtype=torch.int32)
    kc[7, :, 1:] = vc[7, :, 1:] = kc[2, :, 3] = vc[2, :, 3] = float("nan")  # never written
    q = torch.randn(6, hq, d, generator=g)
    out = torch.full_like(q, float("nan"))
    ipex.llm.modules.PagedAttention.flash_attn_varlen_func(
        out, q, kc, vc, cu_q, cu_k, 3, 7, 0.4, True, tables, None, window_size_left=window, window_size_right=-1
    )
    for b in range(3):
        k, v = _cached(kc, vc, tables[b].tolist(), klens[b])
        i = torch.arange(qlens[b])[:, None] + klens[b] - qlens[b]
        j = torch.arange(klens[b])[None, :]
        allowed = (j <= i) & ((j >= i - window) if window >= 0 else True)
        s = slice(int(cu_q[b]), int(cu_q[b + 1]))
        _close(out[s], _ref_attention(q[s], k, v, 0.4, allowed))


# ------------------------------------------------------------------ names TGI only imports
@pytest.mark.parametrize(
    "path",
    [
        "llm.modules.GatedMLPMOE",
        "llm.functional.add_layer_norm",
        "llm.functional.bgmv_shrink",
        "llm.modules.PagedAttention.reshape_and_cache_flash",
        "llm.quantization.IPEXWeightOnlyQuantizedLinear",
        "distributed.all_reduce",
    ],
)
def test_import_only_names_raise_naming_themselves(ipex, path):
    obj = ipex
    for part in path.split("."):
        obj = getattr(obj, part)
    with pytest.raises(NotImplementedError, match=path.replace(".", r"\.")):
        obj()


def test_fp8_caches_are_refused(ipex):
    kc, vc = _paged(_gen(7))
    with pytest.raises(NotImplementedError, match="fp8"):
        ipex.llm.modules.PagedAttention.reshape_and_cache(
            torch.zeros(1, 2, 8), torch.zeros(1, 2, 8), kc, vc, torch.tensor([0]), kv_cache_dtype="fp8_e5m2"
        )
