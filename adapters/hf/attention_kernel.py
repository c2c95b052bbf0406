"""Tree attention whose result for one query does not depend on what else is in the pass.

A verify pass scores a query at position ``p`` against its row's committed prefix
(cache slots ``[0, lens)``) and its tree ancestors (slots ``end + node``); autoregressive
decoding scores the same position against slots ``[0, p]``. Both see the same keys in the
same order, split differently between the cache and the new tokens. Library attention
(SDPA, blocked online softmax) sums keys in blocks whose boundaries follow the key count
and the number of queries, so the two differ in the last bits, and in bf16 that is an
argmax that flips. Here every reduction runs over the visible keys in position order and
nothing else:

- a score is ``((0 + q0 k0) + q1 k1) + ...`` over the head dimension (no FMA contraction,
  no reassociation: numba's default), vectorised across keys, never across dimensions;
- the softmax uses the exact maximum, a deterministic float32 exp built from IEEE ``+``,
  ``*`` and ``floor`` (the same bits in vector and scalar code, unlike libm's or SLEEF's),
  and a sequential sum;
- the value sum is sequential over keys, vectorised across dimensions.

So a query's output is a function of its own visible keys alone, bit for bit.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["tree_attention", "deterministic_exp"]

_INV_LN2 = np.float32(1.4426950408889634)
#: ln 2 split so that k * _LN2_HI is exact for |k| < 2**11
_LN2_HI = np.float32(0.693359375)
_LN2_LO = np.float32(-2.12194440e-4)
#: 2**-k for k = 0..127, exact: the exp's final scaling without ldexp
_POW2_NEG = np.array([2.0**-k for k in range(128)], np.float32)


@njit(cache=True, nogil=True, inline="always")
def _exp_nonpositive(x, pow2):
    """exp(x) for x <= 0 in float32, branch-free (degree-7 Taylor on |r| <= ln2/2: relative
    error below 2e-7); values below -87 give exp(-87) ~ 1.6e-38, i.e. nothing."""
    x = max(x, np.float32(-87.0))
    k = np.floor(x * _INV_LN2 + np.float32(0.5))
    r = (x - k * _LN2_HI) - k * _LN2_LO
    p = np.float32(1.0 / 5040.0)
    p = p * r + np.float32(1.0 / 720.0)
    p = p * r + np.float32(1.0 / 120.0)
    p = p * r + np.float32(1.0 / 24.0)
    p = p * r + np.float32(1.0 / 6.0)
    p = p * r + np.float32(0.5)
    p = p * r + np.float32(1.0)
    p = p * r + np.float32(1.0)
    return p * pow2[int(-k)]


@njit(cache=True, nogil=True)
def deterministic_exp(x: np.ndarray) -> np.ndarray:
    """Elementwise exp of non-positive float32 values (the kernel's exp, exposed for tests)."""
    out = np.empty(x.shape[0], np.float32)
    for i in range(x.shape[0]):
        out[i] = _exp_nonpositive(x[i], _POW2_NEG)
    return out


@njit(cache=True, nogil=True)
def tree_attention(q, keys_t, values, prefix, extra_ptr, extra_slot, scale, out):
    """Attention of every query over its visible keys.

    q: ``[B, H, W, D]`` float32; keys_t: ``[B, G, D, T]`` float32 (keys transposed, so a
    score loop reads contiguous keys); values: ``[B, G, T, D]`` float32; query ``(b, w)``
    sees slots ``[0, prefix[b, w])`` and then ``extra_slot[extra_ptr[b*W+w]:extra_ptr[b*W+w+1]]``
    (ascending: its tree ancestors and itself). ``out``: ``[B, W, H, D]`` float32. The
    ``H // G`` query heads of a KV head are scored together (one read of its keys).
    """
    n_b, n_h, n_w, n_d = q.shape
    n_g = keys_t.shape[1]
    rep = n_h // n_g
    longest = 1
    for b in range(n_b):
        for w in range(n_w):
            longest = max(longest, prefix[b, w] + extra_ptr[b * n_w + w + 1] - extra_ptr[b * n_w + w])
    scores = np.empty((rep, longest), np.float32)
    acc = np.empty((rep, n_d), np.float32)
    pow2 = _POW2_NEG
    for b in range(n_b):
        for w in range(n_w):
            n_pre = prefix[b, w]
            e0, e1 = extra_ptr[b * n_w + w], extra_ptr[b * n_w + w + 1]
            n = n_pre + e1 - e0
            for g in range(n_g):
                kt = keys_t[b, g]
                for r in range(rep):
                    s = scores[r]
                    for t in range(n_pre):
                        s[t] = np.float32(0.0)
                for d in range(n_d):
                    row = kt[d]
                    for r in range(rep):
                        qd = q[b, g * rep + r, w, d]
                        s = scores[r]
                        for t in range(n_pre):
                            s[t] = s[t] + qd * row[t]
                for r in range(rep):
                    h = g * rep + r
                    s = scores[r]
                    for j in range(e0, e1):
                        slot = extra_slot[j]
                        v = np.float32(0.0)
                        for d in range(n_d):
                            v = v + q[b, h, w, d] * kt[d, slot]
                        s[n_pre + j - e0] = v
                    top = np.float32(-np.inf)
                    for t in range(n):
                        s[t] = s[t] * scale
                    for t in range(n):
                        top = max(top, s[t])
                    for t in range(n):
                        s[t] = _exp_nonpositive(s[t] - top, pow2)
                    total = np.float32(0.0)
                    for t in range(n):
                        total = total + s[t]
                    a = acc[r]
                    for d in range(n_d):
                        a[d] = np.float32(0.0)
                    vals = values[b, g]
                    for t in range(n_pre):
                        p = s[t]
                        vrow = vals[t]
                        for d in range(n_d):
                            a[d] = a[d] + p * vrow[d]
                    for j in range(e0, e1):
                        p = s[n_pre + j - e0]
                        vrow = vals[extra_slot[j]]
                        for d in range(n_d):
                            a[d] = a[d] + p * vrow[d]
                    for d in range(n_d):
                        out[b, w, h, d] = a[d] / total
