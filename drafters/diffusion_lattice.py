"""Engine-free pieces of the diffusion drafter: token lattice, causal-consistency path search,
adaptive draft length.

A masked diffusion LM given the context and k masked slots returns, in one denoising step,
a distribution per slot. DiffuSpec (arXiv 2510.02358) turns them into a draft:

* **Lattice** (:func:`build_lattice`): per position, the smallest top set whose cumulative
  mass reaches ``tau`` (at most ``cap`` tokens). EOS is exempt from the cap: it is in the
  set whenever the mass of the tokens more likely than it is below ``tau``. The lattice is
  cut after the first position whose set holds an EOS (nothing is drafted past an end).
* **Causal-consistency path search** (:func:`beam_search`): beam search (``beams`` wide)
  left to right over the lattice scoring ``lam * log p_dlm + (1 - lam) * log p_causal``,
  where the causal proxy is an n-gram model of the request's own context
  (:class:`NgramProxy`, over specplug's retrieval automaton) instead of an external KenLM.
* **Adaptive draft length** (:class:`AdaptiveLength`, DiffuSpec's ADL): EMAs (rho) of the
  generated length G (the lattice length, i.e. up to the first EOS) and of the accepted
  length A; ``k_next = clip(floor(G) + delta * [A >= G], k_min, k_max)``.

Everything is numpy (the proxy's counts are read by numba kernels); loops run over lattice
positions and beams, never over the vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from .errors import ConfigError
from .ngram_automaton import FAIL, FIRST_CHILD, FREQ, NEXT_SIBLING, NgramPool, advance, child_of

__all__ = [
    "Lattice",
    "build_lattice",
    "beam_search",
    "argmax_path",
    "AdaptiveLength",
    "NgramProxy",
    "UniformProxy",
    "path_score",
]

NEG_INF = np.float32(-np.inf)


@dataclass
class Lattice:
    """tokens [L, C] int64 (-1 = empty), logp [L, C] float32 (log p_dlm, -inf where empty),
    sorted by probability within a row; ``eos_cut``: True when the last row holds an EOS."""

    tokens: np.ndarray
    logp: np.ndarray
    eos_cut: bool
    k: int  # slots the model was given (before the cut)

    @property
    def length(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def sizes(self) -> np.ndarray:
        return (self.tokens >= 0).sum(axis=1)


def build_lattice(
    top_probs: np.ndarray,
    top_ids: np.ndarray,
    eos_probs: np.ndarray | None = None,
    eos_mass_above: np.ndarray | None = None,
    eos_ids=(),
    tau: float = 0.8,
    cap: int = 15,
) -> Lattice:
    """The lattice from per-position top candidates.

    ``top_probs``/``top_ids`` [k, C>=cap]: each position's most likely tokens, best first
    (C may exceed cap; only the first ``cap`` are used). ``eos_probs`` [k, E] the
    probability of each EOS id and ``eos_mass_above`` [k, E] the total probability of the
    tokens strictly more likely than it (both from the full distribution; the caller
    computes them vectorised). An EOS is in a position's set iff ``eos_mass_above < tau``.
    """
    if not 0.0 < tau <= 1.0:
        raise ConfigError(f"tau must lie in (0, 1], got {tau}")
    if cap < 1:
        raise ConfigError(f"cap must be >= 1, got {cap}")
    p = np.asarray(top_probs, np.float64)[:, :cap]
    ids = np.asarray(top_ids, np.int64)[:, :cap]
    k, c = p.shape
    if k == 0:
        return Lattice(np.zeros((0, 1), np.int64), np.zeros((0, 1), np.float32), False, 0)
    cum = np.cumsum(p, axis=1)
    # smallest prefix reaching tau: 1 + number of prefixes still below tau, capped
    n_keep = np.minimum(1 + (cum < tau - 1e-12).sum(axis=1), c)
    keep = np.arange(c)[None, :] < n_keep[:, None]
    eos = np.asarray(list(eos_ids), np.int64)
    extra_tok = np.full((k, max(len(eos), 0)), -1, np.int64)
    extra_p = np.zeros((k, max(len(eos), 0)))
    eos_in = np.zeros(k, bool)
    if len(eos):
        is_eos = ids[:, :, None] == eos[None, None, :]  # [k, c, E]
        eos_in |= (is_eos & keep[:, :, None]).any(axis=(1, 2))
        if eos_probs is not None and eos_mass_above is not None:
            ep = np.asarray(eos_probs, np.float64).reshape(k, len(eos))
            above = np.asarray(eos_mass_above, np.float64).reshape(k, len(eos))
            want = (above < tau) & (ep > 0)  # in the set by mass
            have = (is_eos & keep[:, :, None]).any(axis=1)  # already kept [k, E]
            add = want & ~have
            extra_tok = np.where(add, eos[None, :], -1)
            extra_p = np.where(add, ep, 0.0)
            eos_in |= want.any(axis=1)
    toks = np.concatenate([np.where(keep, ids, -1), extra_tok], axis=1)
    probs = np.concatenate([np.where(keep, p, 0.0), extra_p], axis=1)
    # re-sort each row by probability (the appended EOS columns), empty slots last
    order = np.argsort(-np.where(toks >= 0, probs, -1.0), axis=1, kind="stable")
    toks = np.take_along_axis(toks, order, axis=1)
    probs = np.take_along_axis(probs, order, axis=1)
    width = max(1, int((toks >= 0).sum(axis=1).max()))
    toks, probs = toks[:, :width], probs[:, :width]
    cut = False
    hits = np.flatnonzero(eos_in)
    if hits.size:
        toks, probs = toks[: hits[0] + 1], probs[: hits[0] + 1]
        cut = True
    with np.errstate(divide="ignore"):
        logp = np.where(toks >= 0, np.log(np.maximum(probs, 1e-30)), -np.inf).astype(np.float32)
    return Lattice(toks, logp, cut, k)


# ------------------------------------------------------------------ causal proxies
class UniformProxy:
    """A causal proxy that knows nothing: log p_causal = -log V everywhere (tests, ablations)."""

    def __init__(self, vocab_size: int):
        self.logp = -float(np.log(vocab_size))

    def initial(self) -> int:
        return 0

    def score(self, states: np.ndarray, cands: np.ndarray) -> np.ndarray:
        return np.where(cands >= 0, self.logp, -np.inf).astype(np.float32)

    def advance(self, states: np.ndarray, toks: np.ndarray) -> np.ndarray:
        return states.copy()


@njit(cache=True)
def _cont_total(nodes, v):
    s = 0
    c = nodes[v, FIRST_CHILD]
    while c >= 0:
        s += nodes[c, FREQ]
        c = nodes[c, NEXT_SIBLING]
    return s


@njit(cache=True)
def _proxy_score(nodes, table, root, root_total, states, cands, beta, inv_vocab, out):
    """Interpolated (Dirichlet-smoothed) n-gram log-probabilities along each state's failure chain:
    p(t | v) = (c(v, t) + beta * p(t | fail(v))) / (C(v) + beta), p(t | {}) from the root over a
    uniform base."""
    nb, nc = cands.shape
    chain = np.empty(64, np.int64)
    totals = np.empty(64, np.int64)
    for b in range(nb):
        # the failure chain of the state, deepest first (depth <= automaton depth <= 64),
        # with each context's continuation count (the same for every candidate)
        n = 0
        v = states[b]
        while v != root and n < 63:
            chain[n] = v
            totals[n] = _cont_total(nodes, v)
            n += 1
            v = nodes[v, FAIL]
        chain[n] = root
        totals[n] = root_total
        n += 1
        for j in range(nc):
            t = cands[b, j]
            if t < 0:
                out[b, j] = -np.inf
                continue
            p = inv_vocab
            for i in range(n - 1, -1, -1):  # shortest context first
                u = chain[i]
                tot = totals[i]
                if tot == 0:
                    continue
                ch = child_of(nodes, table, u, t)
                cnt = nodes[ch, FREQ] if ch >= 0 else 0
                p = (cnt + beta * p) / (tot + beta)
            out[b, j] = np.log(p)


@njit(cache=True)
def _proxy_advance(nodes, table, root, states, toks, out):
    for b in range(states.shape[0]):
        out[b] = advance(nodes, table, root, states[b], toks[b])


class NgramProxy:
    """The causal proxy p_causal(t | context + path) of one request, read from its automaton owner.

    States are automaton nodes (the longest matched suffix of context + path); the model is
    an interpolated n-gram of the context itself, order = the automaton depth.
    """

    def __init__(self, pool: NgramPool, slot: int, vocab_size: int, beta: float = 1.0):
        self.pool, self.slot = pool, int(slot)
        self.root = int(pool.root(slot))
        self.beta = float(beta)
        self.inv_vocab = 1.0 / float(vocab_size)
        self.root_total = int(_cont_total(pool.nodes, self.root))

    def initial(self) -> int:
        return int(self.pool.active(self.slot))

    def score(self, states: np.ndarray, cands: np.ndarray) -> np.ndarray:
        out = np.empty(cands.shape, np.float64)
        _proxy_score(
            self.pool.nodes,
            self.pool.table,
            self.root,
            self.root_total,
            np.ascontiguousarray(states, np.int64),
            np.ascontiguousarray(cands, np.int64),
            self.beta,
            self.inv_vocab,
            out,
        )
        return out.astype(np.float32)

    def advance(self, states: np.ndarray, toks: np.ndarray) -> np.ndarray:
        out = np.empty(states.shape[0], np.int64)
        _proxy_advance(
            self.pool.nodes,
            self.pool.table,
            self.root,
            np.ascontiguousarray(states, np.int64),
            np.ascontiguousarray(toks, np.int64),
            out,
        )
        return out


# ------------------------------------------------------------------ path search
def beam_search(lattice: Lattice, proxy, beams: int = 3, lam: float = 0.5):
    """Top-``beams`` paths through the lattice under lam*log p_dlm + (1-lam)*log p_causal.

    Returns (paths [m, L] int64, scores [m] float64 best first, dlm_logp [m, L] float32 per
    step). Every path spans the whole lattice (an EOS can only sit in the last row).
    Ties break towards the lower (beam, candidate) index, so results are deterministic.
    """
    if beams < 1:
        raise ConfigError(f"beams must be >= 1, got {beams}")
    if not 0.0 <= lam <= 1.0:
        raise ConfigError(f"lambda must lie in [0, 1], got {lam}")
    L = lattice.length
    if L == 0:
        return np.zeros((1, 0), np.int64), np.zeros(1), np.zeros((1, 0), np.float32)
    paths = np.zeros((1, 0), np.int64)
    dlm = np.zeros((1, 0), np.float32)
    score = np.zeros(1)
    states = np.array([proxy.initial()], np.int64)
    for j in range(L):
        cand = lattice.tokens[j]
        lp = lattice.logp[j].astype(np.float64)
        valid = cand >= 0
        cands = np.broadcast_to(cand, (paths.shape[0], cand.shape[0]))
        if lam < 1.0:
            causal = proxy.score(states, cands).astype(np.float64)
        else:
            causal = np.zeros(cands.shape)
        with np.errstate(invalid="ignore"):
            total = score[:, None] + lam * lp[None, :] + (1.0 - lam) * causal
        total = np.where(valid[None, :], total, -np.inf)
        flat = total.ravel()
        n_ok = int(np.isfinite(flat).sum())
        m = min(beams, n_ok)
        if m == 0:
            break
        order = np.argsort(-flat, kind="stable")[:m]
        bi, ci = np.divmod(order, cand.shape[0])
        toks = cand[ci]
        paths = np.concatenate([paths[bi], toks[:, None]], axis=1)
        dlm = np.concatenate([dlm[bi], lattice.logp[j][ci][:, None]], axis=1)
        score = flat[order]
        states = proxy.advance(states[bi], toks) if lam < 1.0 else states[bi]
    return paths, score, dlm


def argmax_path(lattice: Lattice):
    """The per-position argmax (the CPS ablation): (paths [1, L], scores [1], dlm_logp [1, L])."""
    if lattice.length == 0:
        return np.zeros((1, 0), np.int64), np.zeros(1), np.zeros((1, 0), np.float32)
    toks = lattice.tokens[:, 0][None, :]
    lp = lattice.logp[:, 0][None, :]
    return toks.astype(np.int64), lp.sum(axis=1).astype(np.float64), lp


def path_score(lattice: Lattice, proxy, path, lam: float) -> float:
    """The search objective of one full path (for brute-force checks)."""
    s = 0.0
    state = np.array([proxy.initial()], np.int64)
    for j, t in enumerate(path):
        row = lattice.tokens[j]
        hit = np.flatnonzero(row == t)
        if hit.size == 0:
            return -np.inf
        c = proxy.score(state, np.array([[t]], np.int64))[0, 0] if lam < 1.0 else 0.0
        s += lam * float(lattice.logp[j, hit[0]]) + (1.0 - lam) * float(c)
        state = proxy.advance(state, np.array([t], np.int64))
    return s


# ------------------------------------------------------------------ adaptive draft length
class AdaptiveLength:
    """DiffuSpec's ADL: G, A = EMAs (weight ``rho`` on the old value) of the generated length
    and the accepted length; ``k = clip(floor(G) + delta * [A >= G], k_min, k_max)``."""

    def __init__(self, k_min: int = 20, k_max: int = 30, rho: float = 0.5, delta: int = 10, k_init: int | None = None):
        if not 1 <= k_min <= k_max:
            raise ConfigError(f"draft length bounds need 1 <= k_min <= k_max, got k_min={k_min}, k_max={k_max}")
        if not 0.0 <= rho < 1.0:
            raise ConfigError(f"rho must lie in [0, 1), got {rho}")
        self.k_min, self.k_max, self.rho, self.delta = int(k_min), int(k_max), float(rho), int(delta)
        self.k = int(k_max if k_init is None else min(max(k_init, k_min), k_max))
        self.G = float(self.k)
        self.A = 0.0

    def update(self, generated: int, accepted: int) -> int:
        r = self.rho
        self.G = r * self.G + (1.0 - r) * float(generated)
        self.A = r * self.A + (1.0 - r) * float(accepted)
        k = int(np.floor(self.G + 1e-9)) + (self.delta if self.A >= self.G else 0)
        self.k = int(min(max(k, self.k_min), self.k_max))
        return self.k
