"""Reference verifiers, vectorised over the batch (loops run over tree depth only).

Inputs are padded batches (see ``pack_trees``): tokens/parents/depth/valid [B, W].
Outputs, per request b:
  accept_len[b]          accepted draft nodes below the root
  accepted_nodes[b, :]   node path root-first, padded with -1 ([B, Dmax + 1])
  bonus[b]               the token the target emits after the last accepted node
Committed tokens this step = tokens[b, accepted_nodes[b, 1:accept_len+1]] + [bonus[b]].
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["VerifyResult", "verify_greedy", "committed_tokens"]


@dataclass
class VerifyResult:
    accept_len: np.ndarray      # [B] int32
    accepted_nodes: np.ndarray  # [B, Dmax + 1] int32, -1 padded
    bonus: np.ndarray           # [B] int64

    def committed(self, tokens: np.ndarray, b: int) -> list[int]:
        return committed_tokens(tokens, self, b)


def committed_tokens(tokens: np.ndarray, res: VerifyResult, b: int) -> list[int]:
    n = int(res.accept_len[b])
    return [int(t) for t in tokens[b, res.accepted_nodes[b, 1:n + 1]]] + [int(res.bonus[b])]


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


def verify_greedy(tokens: np.ndarray, parents: np.ndarray, depth: np.ndarray, valid: np.ndarray,
                  target_argmax: np.ndarray) -> VerifyResult:
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
    for d in range(1, int(depth.max()) + 1 if w else 1):
        at = depth == d
        alive = np.where(at, matched & alive[rows, par], alive)
    score = np.where(alive, depth, -1)
    last = score.argmax(axis=1)
    accept_len = depth[np.arange(b), last].astype(np.int32)
    bonus = target_argmax[np.arange(b), last].astype(np.int64)
    return VerifyResult(accept_len, _backtrack(parents, last, accept_len), bonus)
