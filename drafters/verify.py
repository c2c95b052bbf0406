"""Reference verifiers, vectorised over the batch (loops run over tree depth only).

Inputs are padded batches (see ``pack_trees``): tokens/parents/depth/valid [B, W].
Outputs, per request b:
  accept_len[b]          accepted draft nodes below the root
  accepted_nodes[b, :]   node path root-first, padded with -1 ([B, Dmax + 1])
  bonus[b]               the token the target emits after the last accepted node
Committed tokens this step = tokens[b, accepted_nodes[b, 1:accept_len+1]] + [bonus[b]].

``verify_greedy`` takes the target's argmax per node; ``verify_sampling`` takes the
target's warped distributions per node (see ``sampling.warp_logits``) and, for drafts
sampled from a distribution, the draft distributions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["VerifyResult", "verify_greedy", "verify_sampling", "committed_tokens", "packed_links"]


@dataclass
class VerifyResult:
    accept_len: np.ndarray  # [B] int32
    accepted_nodes: np.ndarray  # [B, Dmax + 1] int32, -1 padded
    bonus: np.ndarray  # [B] int64

    def committed(self, tokens: np.ndarray, b: int) -> list[int]:
        return committed_tokens(tokens, self, b)


def committed_tokens(tokens: np.ndarray, res: VerifyResult, b: int) -> list[int]:
    n = int(res.accept_len[b])
    return [int(t) for t in tokens[b, res.accepted_nodes[b, 1 : n + 1]]] + [int(res.bonus[b])]


def _backtrack(parents: np.ndarray, last: np.ndarray, accept_len: np.ndarray) -> np.ndarray:
    """Root-first node paths ending at ``last`` (vectorised over the batch)."""
    b = parents.shape[0]
    dmax = int(accept_len.max()) if b else 0
    nodes = np.full((b, dmax + 1), -1, np.int32)
    rows = np.arange(b)
    cur = last.astype(np.int64)
    for d in range(dmax, -1, -1):
        here = accept_len >= d
        nodes[rows[here], d] = cur[here]
        step = here & (d > 0)
        cur = np.where(step, parents[rows, cur], cur)
    return nodes


def verify_greedy(
    tokens: np.ndarray, parents: np.ndarray, depth: np.ndarray, valid: np.ndarray, target_argmax: np.ndarray
) -> VerifyResult:
    """Walk from the root into the child whose token equals the target's argmax at the
    current node; the target's argmax at the last accepted node is the bonus token.

    Siblings carry distinct tokens, so at most one child matches: the alive set is a chain.
    """
    tokens = np.asarray(tokens)
    parents = np.asarray(parents)
    target_argmax = np.asarray(target_argmax)
    b, w = tokens.shape
    rows = np.arange(b)[:, None]
    par = np.maximum(parents, 0)
    matched = valid & (parents >= 0) & (tokens == target_argmax[rows, par])
    alive = np.zeros((b, w), dtype=bool)
    alive[:, 0] = True
    for d in range(1, int(depth.max()) + 1 if depth.size else 1):
        at = depth == d
        alive = np.where(at, matched & alive[rows, par], alive)
    score = np.where(alive, depth, -1)
    last = score.argmax(axis=1)
    accept_len = depth[np.arange(b), last].astype(np.int32)
    bonus = target_argmax[np.arange(b), last].astype(np.int64)
    return VerifyResult(accept_len, _backtrack(parents, last, accept_len), bonus)


# ---------------------------------------------------------------------------- sampling


def packed_links(parents: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """first_child / next_sibling links of a padded batch ([B, W] each, -1 where none).

    Children are ordered by node index; padding nodes (``valid`` False) are nobody's child.
    """
    parents = np.asarray(parents)
    valid = np.asarray(valid, dtype=bool)
    b, w = parents.shape
    first_child = np.full((b, w), -1, np.int32)
    next_sibling = np.full((b, w), -1, np.int32)
    rb, node = np.nonzero(valid & (parents >= 0))  # row-major: by request, then index
    if node.shape[0]:
        par = parents[rb, node]
        order = np.lexsort((node, par, rb))  # by request, parent, then index
        rb, node, par = rb[order], node[order], par[order]
        same = (rb[1:] == rb[:-1]) & (par[1:] == par[:-1])
        next_sibling[rb[:-1][same], node[:-1][same]] = node[1:][same]
        starts = np.ones(node.shape[0], dtype=bool)
        starts[1:] = ~same
        first_child[rb[starts], par[starts]] = node[starts]
    return first_child, next_sibling


#: a rejection whose residual keeps less mass than this is skipped (the residual is
#: kept): the rejection itself had at most this probability, so the output
#: distribution moves by at most this much, and no row is ever left all-zero.
_MIN_MASS = 1e-12


def _renorm(r: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """Rows of ``r`` scaled to sum 1; rows with (numerically) no mass take ``fallback``."""
    mass = r.sum(dim=-1, keepdim=True)
    return torch.where(mass > _MIN_MASS, r / mass.clamp_min(_MIN_MASS), fallback)


def _drop_drafted(q: torch.Tensor, rows: torch.Tensor, tok: torch.Tensor) -> torch.Tensor:
    """The draft distribution for the next sibling: the rejected token removed (siblings
    are distinct, i.e. drawn without replacement), renormalised. Rows whose q has no
    mass left stay all-zero; their further siblings are skipped."""
    q = q.clone()
    q[rows, tok] = 0.0
    mass = q.sum(dim=-1, keepdim=True)
    return torch.where(mass > 0, q / mass.clamp_min(1e-300), q)


def _verify_sampling_core(tokens, parents, depth, valid, target_probs, draft_probs, coin, sample):
    """The sampling walk. ``coin(p) -> bool`` decides acceptances with probabilities ``p``
    (1-D, one per request still trying a child); ``sample(R) -> tokens`` draws the bonus
    tokens from residual rows ``R`` ([B, V]). Exposed so that tests can enumerate every
    random outcome exactly."""
    tokens = np.asarray(tokens)
    parents = np.asarray(parents)
    depth = np.asarray(depth)
    valid = np.asarray(valid, dtype=bool)
    b, w = tokens.shape
    if target_probs.shape[:2] != (b, w):
        raise ValueError(f"target_probs must be [B, W, V] = [{b}, {w}, V], got {tuple(target_probs.shape)}")
    if draft_probs is not None and draft_probs.shape != target_probs.shape:
        raise ValueError(
            f"draft_probs must have the shape of target_probs {tuple(target_probs.shape)}, "
            f"got {tuple(draft_probs.shape)}"
        )
    if b == 0:
        return VerifyResult(np.zeros(0, np.int32), np.full((0, 1), -1, np.int32), np.zeros(0, np.int64))
    dev = target_probs.device
    f64 = torch.float64
    first_child, next_sibling = packed_links(parents, valid)
    fc = torch.as_tensor(first_child, dtype=torch.long, device=dev)
    ns = torch.as_tensor(next_sibling, dtype=torch.long, device=dev)
    tok = torch.as_tensor(tokens, dtype=torch.long, device=dev)
    rows = torch.arange(b, device=dev)

    cur = torch.zeros(b, dtype=torch.long, device=dev)
    active = torch.ones(b, dtype=torch.bool, device=dev)  # still descending
    resid = target_probs[rows, cur].to(f64)  # residual at the current node
    max_depth = int(depth[valid].max()) if valid.any() else 0
    for _ in range(max_depth):  # one pass per tree level
        child = torch.where(active, fc[rows, cur], -1)
        active = child >= 0
        if not bool(active.any()):
            break
        q = None
        if draft_probs is not None:
            q = draft_probs[rows, cur].to(f64).clamp_min(0.0)
            q = q / q.sum(dim=-1, keepdim=True).clamp_min(1e-300)
        took = torch.full((b,), -1, dtype=torch.long, device=dev)
        trying = active.clone()
        while bool(trying.any()):  # one pass per sibling rank
            idx = rows[trying]
            c = child[idx]
            t = tok[idx, c]
            r_t = resid[idx, t]
            if q is None:
                p = r_t
            else:
                q_t = q[idx, t]
                p = torch.where(q_t > 0, torch.clamp(r_t / q_t.clamp_min(1e-300), max=1.0), 0.0)
            ok = torch.as_tensor(coin(p), dtype=torch.bool, device=dev)
            took[idx[ok]] = c[ok]
            rej, c_rej, t_rej = idx[~ok], c[~ok], t[~ok]
            if rej.numel():
                r = resid[rej]
                if q is None:
                    r[torch.arange(rej.numel(), device=dev), t_rej] = 0.0
                    resid[rej] = _renorm(r, resid[rej])
                else:
                    drawable = q[rej, t_rej] > 0  # a draft q could not produce is skipped
                    new = _renorm(torch.clamp(r - q[rej], min=0.0), r)
                    resid[rej] = torch.where(drawable[:, None], new, r)
                    q[rej] = _drop_drafted(q[rej], torch.arange(rej.numel(), device=dev), t_rej)
            nxt = torch.full((b,), -1, dtype=torch.long, device=dev)
            nxt[rej] = ns[rej, c_rej]
            child = nxt
            trying = child >= 0
        moved = took >= 0
        cur = torch.where(moved, took, cur)
        if bool(moved.any()):
            resid[moved] = target_probs[rows[moved], cur[moved]].to(f64)
        active = moved
    bonus = torch.as_tensor(sample(resid), device=dev).reshape(b)
    last = cur.cpu().numpy()
    accept_len = depth[np.arange(b), last].astype(np.int32)
    return VerifyResult(accept_len, _backtrack(parents, last, accept_len), bonus.cpu().numpy().astype(np.int64))


def verify_sampling(
    tokens: np.ndarray,
    parents: np.ndarray,
    depth: np.ndarray,
    valid: np.ndarray,
    target_probs: torch.Tensor,
    generator: torch.Generator | None = None,
    draft_probs: torch.Tensor | None = None,
) -> VerifyResult:
    """Lossless speculative sampling over a padded batch of draft trees.

    ``target_probs[b, i]`` is the target's (already warped) next-token distribution
    after node i. At the current node, children are tried in ascending node index
    with a residual R, initially the target distribution at the node:

    - deterministic drafts (``draft_probs`` None): accept child token t with
      probability R(t); on rejection set R(t) = 0 and renormalise;
    - drafts sampled from q (``draft_probs[b, i]``: the distribution the children of
      node i were drawn from, in node order and without replacement, since siblings
      are distinct): accept with min(1, R(t) / q_k(t)); on rejection
      R <- norm(max(R - q_k, 0)) and q_{k+1} = q_k with t removed, renormalised.
      The first sibling uses q itself (SpecInfer's rule); removing drafted tokens from
      q is what keeps later siblings lossless under sampling without replacement.
      Deterministic drafts are the special case q_k = one-hot(t).

    The walk moves into the accepted child and repeats; where no child is accepted
    the bonus token is drawn from the residual. Padding nodes are never visited.
    Rejections that would leave a residual of (numerically) zero mass are skipped.
    Loops run over tree depth and sibling rank only, vectorised over the batch.
    """

    def coin(p: torch.Tensor) -> torch.Tensor:
        return torch.rand(p.shape, generator=generator, dtype=p.dtype, device=p.device) < p

    def sample(r: torch.Tensor) -> torch.Tensor:
        return torch.multinomial(r, 1, generator=generator).squeeze(1)

    return _verify_sampling_core(tokens, parents, depth, valid, target_probs, draft_probs, coin, sample)
