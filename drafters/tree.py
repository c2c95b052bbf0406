"""The draft tree: a flattened, topologically ordered token tree and its derived views.

Node 0 is the root: the newest committed token whose KV is not computed yet.
Nodes 1..n-1 are guesses of the tokens after it; ``parents[i] < i``.
Every derived view is computed once (cached) with vectorised numpy; loops run
over tree depth, never over nodes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .errors import DraftTreeError

__all__ = ["DraftTree", "PackedTrees", "pack_trees"]


class DraftTree:
    """tokens[n] int32, parents[n] int32 (parents[0] = -1, parents[i] < i), scores[n] float32.

    ``node_data`` [n] int32, optional: the drafter's own per-node value (RACER: the
    calibration cell each node was valued by), carried through every cut and chain an
    engine makes of the tree (:meth:`prefix`, :meth:`subtree`) and handed back in
    :class:`specplug.drafters.feedback.Feedback`; -1 where a node has none."""

    __slots__ = ("tokens", "parents", "scores", "node_data", "__dict__")

    def __init__(self, tokens, parents, scores=None, *, validate: bool = True, node_data=None):
        self.node_data = None if node_data is None else np.ascontiguousarray(node_data, dtype=np.int32)
        self.tokens = np.ascontiguousarray(tokens, dtype=np.int32)
        self.parents = np.ascontiguousarray(parents, dtype=np.int32)
        if scores is None:
            scores = np.ones(len(self.tokens), dtype=np.float32)
        self.scores = np.ascontiguousarray(scores, dtype=np.float32)
        if validate:
            self.validate()

    # ------------------------------------------------------------------ construction
    @classmethod
    def view(
        cls, tokens: np.ndarray, parents: np.ndarray, scores: np.ndarray, node_data: np.ndarray | None = None
    ) -> DraftTree:
        """A tree over arrays that already have its dtypes and invariants (compiled growers'
        rows): no coercion, no copy, no validation; about 3x cheaper than ``__init__``,
        which matters at 256 trees per step."""
        t = cls.__new__(cls)
        t.tokens, t.parents, t.scores, t.node_data = tokens, parents, scores, node_data
        return t

    @classmethod
    def single(cls, root_token: int) -> DraftTree:
        """A tree of one node: no speculation for this request this step."""
        return cls(np.array([root_token], np.int32), np.array([-1], np.int32), np.ones(1, np.float32), validate=False)

    @classmethod
    def chain(cls, root_token: int, tokens: Sequence[int] | np.ndarray, scores=None) -> DraftTree:
        """Root followed by a single chain of guesses."""
        n = len(tokens) + 1
        toks = np.empty(n, np.int32)
        toks[0] = root_token
        toks[1:] = np.asarray(tokens, dtype=np.int64)
        parents = np.arange(-1, n - 1, dtype=np.int32)
        if scores is None:
            sc = np.ones(n, np.float32)
        else:
            sc = np.empty(n, np.float32)
            sc[0] = 1.0
            sc[1:] = scores
        return cls(toks, parents, sc, validate=False)

    @classmethod
    def from_paths(
        cls,
        root_token: int,
        paths: Sequence[Sequence[int]],
        path_scores: Sequence[Sequence[float]] | None = None,
        budget: int | None = None,
    ) -> DraftTree:
        """Trie union of token paths below the root, in the given order, until ``budget`` nodes.

        A node's score is the max score any inserted path gives it. Used by drafters that
        produce few short candidate sequences (PLD, suffix); compiled drafters build their
        own arrays directly.
        """
        limit = np.iinfo(np.int32).max if budget is None else int(budget)
        tokens, parents, scores = [int(root_token)], [-1], [1.0]
        children: dict[tuple[int, int], int] = {}
        for p_idx, path in enumerate(paths):
            cur = 0
            for d, tok in enumerate(path):
                tok = int(tok)
                s = 1.0 if path_scores is None else float(path_scores[p_idx][d])
                nxt = children.get((cur, tok))
                if nxt is None:
                    if len(tokens) >= limit:
                        break
                    nxt = len(tokens)
                    children[(cur, tok)] = nxt
                    tokens.append(tok)
                    parents.append(cur)
                    scores.append(s)
                elif s > scores[nxt]:
                    scores[nxt] = s
                cur = nxt
        return cls(
            np.array(tokens, np.int32), np.array(parents, np.int32), np.array(scores, np.float32), validate=False
        )

    # ------------------------------------------------------------------ checks
    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def n(self) -> int:
        return len(self)

    def validate(self, vocab_size: int | None = None, budget: int | None = None) -> DraftTree:
        """Raise DraftTreeError naming the broken invariant."""
        t, p, s = self.tokens, self.parents, self.scores
        if t.ndim != 1 or p.shape != t.shape or s.shape != t.shape:
            raise DraftTreeError(
                f"tokens, parents and scores must be 1-D of equal length, got {t.shape}, {p.shape}, {s.shape}"
            )
        n = t.shape[0]
        if n == 0:
            raise DraftTreeError("a draft tree needs at least the root node")
        if p[0] != -1:
            raise DraftTreeError("parents[0] must be -1 (node 0 is the root)")
        if n > 1:
            idx = np.arange(1, n)
            if np.any(p[1:] < 0) or np.any(p[1:] >= idx):
                raise DraftTreeError("parents[i] must satisfy 0 <= parents[i] < i for i >= 1")
            # siblings carry distinct tokens
            key = p[1:].astype(np.int64) << 32 | (t[1:].astype(np.int64) & 0xFFFFFFFF)
            if np.unique(key).shape[0] != n - 1:
                raise DraftTreeError("siblings must carry distinct tokens")
        if np.any(t < 0) or (vocab_size is not None and np.any(t >= vocab_size)):
            raise DraftTreeError(f"token ids must lie in [0, {vocab_size})")
        if not np.all(np.isfinite(s)):
            raise DraftTreeError("scores must be finite")
        if budget is not None and n > budget:
            raise DraftTreeError(f"tree has {n} nodes, over the budget {budget}")
        return self

    # ------------------------------------------------------------------ derived views
    @cached_property
    def depth(self) -> np.ndarray:
        """Depth of each node (root 0), by pointer jumping: O(depth) vectorised passes."""
        p = self.parents
        depth = np.zeros(len(p), np.int32)
        anc = p.copy()
        live = anc >= 0
        while live.any():
            depth += live
            anc = np.where(live, p[np.maximum(anc, 0)], -1)
            live = anc >= 0
        return depth

    @cached_property
    def ancestor_mask(self) -> np.ndarray:
        """mask[i, j] is True when j is i or an ancestor of i (the tree-attention mask)."""
        n = len(self)
        p = self.parents
        mask = np.eye(n, dtype=bool)
        rows = np.arange(n)
        cur = p.copy()
        live = cur >= 0
        while live.any():
            mask[rows[live], cur[live]] = True
            cur = np.where(live, p[np.maximum(cur, 0)], -1)
            live = cur >= 0
        return mask

    def positions(self, start: int = 0) -> np.ndarray:
        """Sequence positions of the nodes when the root sits at ``start``."""
        return start + self.depth

    @cached_property
    def is_leaf(self) -> np.ndarray:
        leaf = np.ones(len(self), dtype=bool)
        leaf[self.parents[1:]] = False
        return leaf

    @cached_property
    def paths(self) -> np.ndarray:
        """Root-to-leaf node paths, one row per leaf, padded with -1: [leaves, max_depth + 1]."""
        leaves = np.flatnonzero(self.is_leaf)
        depth = self.depth
        out = np.full((len(leaves), int(depth.max()) + 1), -1, np.int32)
        li, nj = np.nonzero(self.ancestor_mask[leaves])
        out[li, depth[nj]] = nj
        return out

    @cached_property
    def _sibling_links(self) -> tuple[np.ndarray, np.ndarray]:
        n = len(self)
        first_child = np.full(n, -1, np.int32)
        next_sibling = np.full(n, -1, np.int32)
        if n > 1:
            kids = np.arange(1, n, dtype=np.int32)
            par = self.parents[1:]
            order = np.lexsort((kids, par))  # by parent, then index
            sk, sp = kids[order], par[order]
            same = sp[1:] == sp[:-1]
            next_sibling[sk[:-1][same]] = sk[1:][same]
            starts = np.ones(len(sk), dtype=bool)
            starts[1:] = ~same
            first_child[sp[starts]] = sk[starts]
        return first_child, next_sibling

    @property
    def first_child(self) -> np.ndarray:
        """first_child[i]: lowest-index child of i, -1 for leaves (SGLang's retrieve_next_token)."""
        return self._sibling_links[0]

    @property
    def next_sibling(self) -> np.ndarray:
        """next_sibling[i]: next child of i's parent by index, -1 if none (retrieve_next_sibling)."""
        return self._sibling_links[1]

    @cached_property
    def best_child(self) -> np.ndarray:
        """best_child[i]: the child of i with the highest score (lowest index on ties), -1 if leaf."""
        n = len(self)
        best = np.full(n, -1, np.int32)
        if n > 1:
            kids = np.arange(1, n, dtype=np.int32)
            # sort by parent, then score descending, then index: the first of each parent wins
            order = np.lexsort((kids, -self.scores[1:], self.parents[1:]))
            sp = self.parents[1:][order]
            starts = np.ones(len(sp), dtype=bool)
            starts[1:] = sp[1:] != sp[:-1]
            best[sp[starts]] = kids[order][starts]
        return best

    def best_chain(self, max_len: int | None = None) -> np.ndarray:
        """Node indices of the chain from the root through the best-scoring child at each level.

        ``max_len`` counts guesses below the root. For engines that verify chains only (TGI).
        """
        limit = len(self) if max_len is None else int(max_len)
        best = self.best_child
        chain = [0]
        cur = 0
        while len(chain) <= limit and best[cur] >= 0:  # loop over depth, not nodes
            cur = int(best[cur])
            chain.append(cur)
        return np.asarray(chain, np.int32)

    def chain_tokens(self, max_len: int | None = None) -> np.ndarray:
        """Draft tokens (root excluded) of :meth:`best_chain`."""
        return self.tokens[self.best_chain(max_len)[1:]]

    def path_to(self, node: int) -> np.ndarray:
        """Node indices from the root to ``node`` inclusive."""
        nodes = np.flatnonzero(self.ancestor_mask[node])
        return nodes[np.argsort(self.depth[nodes], kind="stable")].astype(np.int32)

    def prefix(self, n: int) -> DraftTree:
        """The first ``n`` nodes (n >= 1): a valid tree, since parents[i] < i."""
        if n >= len(self):
            return self
        return DraftTree.view(
            self.tokens[:n], self.parents[:n], self.scores[:n], None if self.node_data is None else self.node_data[:n]
        )

    def subtree(self, nodes: np.ndarray) -> DraftTree:
        """The nodes ``nodes`` (ascending, ancestor-closed, root first) as a tree of their own."""
        nodes = np.asarray(nodes, np.int64)
        remap = np.full(len(self), -1, np.int32)
        remap[nodes] = np.arange(nodes.shape[0], dtype=np.int32)
        parents = np.where(self.parents[nodes] >= 0, remap[np.maximum(self.parents[nodes], 0)], -1)
        return DraftTree(
            self.tokens[nodes],
            parents,
            self.scores[nodes],
            validate=False,
            node_data=None if self.node_data is None else self.node_data[nodes],
        )

    def truncate(self, budget: int) -> DraftTree:
        """Keep the ``budget`` best nodes (root always) as a valid tree.

        Scores are made monotone along paths first (a node ranks no higher than its
        ancestors), so the kept set is closed under ancestors.
        """
        n = len(self)
        if budget >= n:
            return self
        if budget < 1:
            raise DraftTreeError("budget must be >= 1")
        eff = self.scores.astype(np.float64).copy()
        eff[0] = np.inf
        depth = self.depth
        # cumulative min down the tree, one vectorised pass per depth level
        for d in range(1, int(depth.max()) + 1):
            at = np.flatnonzero(depth == d)
            eff[at] = np.minimum(eff[at], eff[self.parents[at]])
        # ties: shallower / lower index first keeps closure
        order = np.lexsort((np.arange(n), -eff))
        return self.subtree(np.sort(order[:budget]))

    def __repr__(self) -> str:
        return f"DraftTree(n={len(self)}, tokens={self.tokens.tolist()}, parents={self.parents.tolist()})"


@dataclass
class PackedTrees:
    """A batch of trees padded to a common width, for engines that verify fixed shapes.

    Padding nodes have ``valid=False``; their mask row only sees themselves and
    they are never anyone's ancestor, so they cannot be accepted.
    """

    tokens: np.ndarray  # [B, W] int32 (padding repeats the root token)
    parents: np.ndarray  # [B, W] int32 (padding: -1)
    depth: np.ndarray  # [B, W] int32 (padding: 0)
    mask: np.ndarray  # [B, W, W] bool ancestor-or-self
    valid: np.ndarray  # [B, W] bool
    sizes: np.ndarray  # [B] int32


def pack_trees(trees: Sequence[DraftTree], width: int | None = None) -> PackedTrees:
    b = len(trees)
    sizes = np.array([len(t) for t in trees], np.int32)
    w = int(sizes.max(initial=1)) if width is None else int(width)  # initial: empty batch
    if np.any(sizes > w):
        raise DraftTreeError(f"a tree of {int(sizes.max())} nodes does not fit the width {w}")
    tokens = np.empty((b, w), np.int32)
    parents = np.full((b, w), -1, np.int32)
    depth = np.zeros((b, w), np.int32)
    mask = np.zeros((b, w, w), dtype=bool)
    mask[:, np.arange(w), np.arange(w)] = True
    valid = np.arange(w)[None, :] < sizes[:, None]
    for i, t in enumerate(trees):  # one copy per request, not per node
        n = len(t)
        tokens[i, :n] = t.tokens
        tokens[i, n:] = t.tokens[0]
        parents[i, :n] = t.parents
        depth[i, :n] = t.depth
        mask[i, :n, :n] = t.ancestor_mask
    return PackedTrees(tokens, parents, depth, mask, valid, sizes)
