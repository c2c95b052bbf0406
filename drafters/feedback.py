"""What an engine tells drafters: the target's top-k at some positions, and one verified step.

Engines compute these on the device and bring small host arrays; drafters read the flat
arrays directly (no per-request lists to re-concatenate). Every array is flat over the
batch with per-request offsets, in the order of ``Feedback.rids``.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .errors import ConfigError
from .tree import DraftTree

__all__ = ["TopK", "Feedback", "offsets_of"]

RequestId = Hashable


def offsets_of(sizes) -> np.ndarray:
    """[B + 1] int64 start offsets of B consecutive runs of the given sizes."""
    sizes = np.asarray(sizes, np.int64)
    out = np.zeros(sizes.shape[0] + 1, np.int64)
    np.cumsum(sizes, out=out[1:])
    return out


@dataclass(frozen=True)
class TopK:
    """The target's top-k next-token ids at ``n`` positions (best first), and optionally their
    probabilities (softmax at temperature 1). ``ids`` [n, k] int32, -1 where unknown;
    ``probs`` [n, k] float32 (-1 where unknown) or None when the engine sent ids only."""

    ids: np.ndarray
    probs: np.ndarray | None = None

    @classmethod
    def of(cls, ids, probs=None) -> TopK:
        """Checked and converted: ids to int32 [n, k], probs to float32 of the same shape."""
        ids = np.ascontiguousarray(ids, dtype=np.int32)
        if ids.ndim != 2:
            raise ConfigError(f"top-k ids must have shape [positions, k], got {ids.shape}")
        if probs is not None:
            probs = np.ascontiguousarray(probs, dtype=np.float32)
            if probs.shape != ids.shape:
                raise ConfigError(f"top-k probabilities must have the ids' shape {ids.shape}, got {probs.shape}")
        return cls(ids, probs)

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def k(self) -> int:
        return int(self.ids.shape[1])

    def rows(self, start: int, stop: int) -> TopK:
        return TopK(self.ids[start:stop], None if self.probs is None else self.probs[start:stop])

    def probs_or_unknown(self) -> np.ndarray:
        """The probabilities, or a [n, k] array of -1 (unknown) when the engine sent none."""
        if self.probs is not None:
            return self.probs
        return np.full(self.ids.shape, -1.0, np.float32)


@dataclass
class Feedback:
    """One engine step's verification outcome for a batch of requests.

    ``trees[b]`` is the tree the engine verified for ``rids[b]`` (as cut by the budget policy;
    for chain engines the verified chain, its ``node_data`` kept). ``accepted`` holds, per
    request, the tokens committed this step: the accepted nodes' tokens below the root, then
    the bonus token (so a request's last one is its next root); request b's run is
    ``accepted[accepted_offsets[b]:accepted_offsets[b + 1]]``. ``topk`` gives the target's
    top-k at every node of every tree, flat in tree order (request b's nodes are rows
    ``node_offsets[b]:node_offsets[b + 1]``), or None when the engine sent none;
    ``has_topk[b]`` is false for requests whose rows are unknown (all -1).
    """

    rids: list
    trees: list[DraftTree]
    accepted: np.ndarray
    accepted_offsets: np.ndarray
    topk: TopK | None = None
    has_topk: np.ndarray | None = None

    def __post_init__(self) -> None:
        b = len(self.rids)
        if len(self.trees) != b or self.accepted_offsets.shape[0] != b + 1:
            raise ConfigError(
                f"feedback for {b} requests has {len(self.trees)} trees and "
                f"{self.accepted_offsets.shape[0] - 1} accepted runs"
            )
        if self.topk is not None:
            if len(self.topk) != int(self.node_offsets[-1]):
                raise ConfigError(
                    f"target top-k must have one row per verified tree node "
                    f"({int(self.node_offsets[-1])}), got {len(self.topk)}"
                )
            if self.has_topk is None:
                self.has_topk = np.ones(b, np.bool_)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_lists(
        cls,
        rids: Sequence[RequestId],
        trees: Sequence[DraftTree],
        accepted: Sequence[Sequence[int] | np.ndarray],
        topk: Sequence[TopK | None] | None = None,
    ) -> Feedback:
        """From per-request lists (tests, single-request observe); engines build flat arrays."""
        parts = [np.asarray(a, np.int64).reshape(-1) for a in accepted]
        acc = np.concatenate(parts).astype(np.int32) if parts else np.zeros(0, np.int32)
        flat = None
        has = None
        if topk is not None and any(t is not None for t in topk):
            known = [t for t in topk if t is not None]
            k = max(t.k for t in known)
            probs = any(t.probs is not None for t in known)
            ids_rows, prob_rows = [], []
            for tree, t in zip(trees, topk):
                n = len(tree)
                if t is not None and len(t) != n:
                    raise ConfigError(f"target top-k must have shape [tree nodes = {n}, k], got {t.ids.shape}")
                ids = np.full((n, k), -1, np.int32)
                pr = np.full((n, k), -1.0, np.float32)
                if t is not None:
                    ids[:, : t.k] = t.ids
                    if t.probs is not None:
                        pr[:, : t.k] = t.probs
                ids_rows.append(ids)
                prob_rows.append(pr)
            flat = TopK(np.concatenate(ids_rows), np.concatenate(prob_rows) if probs else None)
            has = np.fromiter((t is not None for t in topk), np.bool_, len(topk))
        return cls(list(rids), list(trees), acc, offsets_of([p.shape[0] for p in parts]), flat, has)

    @classmethod
    def one(
        cls, rid: RequestId, tree: DraftTree, accepted: Sequence[int] | np.ndarray, topk: TopK | None = None
    ) -> Feedback:
        return cls.from_lists([rid], [tree], [accepted], None if topk is None else [topk])

    # ------------------------------------------------------------------ views
    def __len__(self) -> int:
        return len(self.rids)

    @cached_property
    def node_offsets(self) -> np.ndarray:
        return offsets_of([len(t) for t in self.trees])

    @cached_property
    def tokens(self) -> np.ndarray:
        """Every verified node's token, flat [N] int32."""
        return _concat([t.tokens for t in self.trees], np.int32)

    @cached_property
    def parents(self) -> np.ndarray:
        """Every verified node's parent (tree-local index), flat [N] int32."""
        return _concat([t.parents for t in self.trees], np.int32)

    @cached_property
    def node_data(self) -> np.ndarray | None:
        """The drafter's per-node data (``DraftTree.node_data``), flat [N] int32 with -1 for
        trees without it; None when no tree carries any."""
        if all(t.node_data is None for t in self.trees):
            return None
        return _concat(
            [t.node_data if t.node_data is not None else np.full(len(t), -1, np.int32) for t in self.trees], np.int32
        )

    @cached_property
    def accepted_counts(self) -> np.ndarray:
        """Tokens committed per request (bonus included), [B] int64."""
        return np.diff(self.accepted_offsets)

    def accepted_of(self, i: int) -> np.ndarray:
        return self.accepted[self.accepted_offsets[i] : self.accepted_offsets[i + 1]]

    def topk_of(self, i: int) -> TopK | None:
        if self.topk is None or self.has_topk is None or not self.has_topk[i]:
            return None
        return self.topk.rows(int(self.node_offsets[i]), int(self.node_offsets[i + 1]))


def _concat(parts, dtype) -> np.ndarray:
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)
