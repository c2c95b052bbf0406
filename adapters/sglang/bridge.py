"""Engine-independent step logic between SGLang's scheduler and a specplug drafter.

One :class:`DraftBridge` per speculative worker (per TP rank). Each decode step:

1. :meth:`DraftBridge.prepare` gets a view of every request in the batch (rid, the
   number of committed tokens, the last committed token, and a way to read all
   committed tokens). A request seen for the first time, or whose committed length
   no longer matches what the drafter was fed (retraction, a missed step), is
   (re)started with its full context. It then asks the drafter for all trees at once
   (``propose``, batched) and packs them to SGLang's fixed width: draft tokens
   [B * W] and ancestor-or-self mask [B * W * W]. With a load-aware budget policy
   (:class:`specplug.drafters.budget.BudgetPolicy`) the trees are first cut to the
   sizes that maximise the step's expected goodput, and the batch is packed to the
   widest cut tree instead (``PackedStep.width`` <= W; 1 means no speculation); with
   ``tight`` set (engines without CUDA graphs) every step is packed to its widest tree. A
   tree that breaks the contract (wrong root, over budget, token outside the
   vocabulary) is replaced by the root alone and its request restarted, so a drafter
   bug costs speed, never output.
2. SGLang verifies the packed trees (its NGRAM path).
3. :meth:`DraftBridge.feedback` gets the committed tokens per request (accepted
   drafts + bonus, SGLang's ``accept_tokens`` / ``accept_lens``) and, for drafters
   that learn from logits, the target's top-k ids at every packed node; it calls
   ``observe_batch`` with each request's slice.

Finished, aborted or departed requests are released with :meth:`finish` /
:meth:`retain`. State updates depend only on the token stream and top-k ids, which
are identical on every tensor-parallel rank, so every rank's drafter proposes the
same trees (see docs/sglang.md, "Tensor parallelism").
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Hashable, Sequence

import numpy as np

from specplug.drafters.base import Drafter
from specplug.drafters.tree import DraftTree, pack_trees

logger = logging.getLogger(__name__)

__all__ = ["ReqView", "DraftBridge", "PackedStep"]


@dataclass
class ReqView:
    """What the bridge needs to know about one request in a batch."""

    rid: Hashable
    length: int                                # committed tokens (prompt + output)
    last_token: int                            # the newest committed token (the next root)
    context: Callable[[], Sequence[int]]       # all committed tokens, read only on (re)start


@dataclass
class PackedStep:
    rids: list
    trees: list[DraftTree]
    tokens: np.ndarray      # [B * W] int64
    mask: np.ndarray        # [B * W * W] bool
    width: int = 0          # W of this step: the launch width, or less under a budget policy


class DraftBridge:
    def __init__(self, drafter: Drafter, width: int, vocab_size: int | None = None, policy=None):
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        self.drafter = drafter
        self.width = int(width)
        self.vocab_size = vocab_size
        self.policy = policy             # load-aware BudgetPolicy (padded), or None: width fixed
        self.tight = False               # pack each step to its widest tree (no padding to W)
        self.topk = int(getattr(drafter, "topk", 8)) if drafter.uses_target_topk else 0
        self.topk_probs = bool(self.topk and getattr(drafter, "uses_topk_probs", False))
        self._length: dict = {}          # rid -> committed length the drafter has seen
        self._pending: PackedStep | None = None
        self.stats = {"steps": 0, "restarts": 0, "bad_trees": 0, "proposed_nodes": 0,
                      "accepted_tokens": 0, "verified_requests": 0}

    # ------------------------------------------------------------------ lifecycle
    @property
    def active(self) -> int:
        return len(self._length)

    def finish(self, rid) -> None:
        if self._length.pop(rid, None) is not None:
            self.drafter.finish(rid)

    def retain(self, rids) -> list:
        """Finish every active request not in ``rids``; return those finished."""
        keep = set(rids)
        gone = [rid for rid in self._length if rid not in keep]
        for rid in gone:
            self.finish(rid)
        return gone

    def reset(self) -> None:
        for rid in list(self._length):
            self.finish(rid)
        self._pending = None

    def _start(self, req: ReqView) -> None:
        if req.rid in self._length:
            self.drafter.finish(req.rid)
            self.stats["restarts"] += 1
        ctx = req.context()
        self.drafter.start(req.rid, ctx)
        self._length[req.rid] = len(ctx)

    # ------------------------------------------------------------------ one step
    def prepare(self, reqs: Sequence[ReqView]) -> PackedStep:
        for req in reqs:
            if self._length.get(req.rid) != req.length:
                self._start(req)
        rids = [req.rid for req in reqs]
        trees = self.drafter.propose(rids, [self.width] * len(rids))
        if len(trees) != len(rids):
            raise RuntimeError(f"{type(self.drafter).__name__}.propose returned {len(trees)} "
                               f"trees for {len(rids)} requests")
        roots = np.fromiter((req.last_token for req in reqs), np.int64, len(reqs))
        for i, tree in enumerate(trees):
            if len(tree) > self.width or int(tree.tokens[0]) != roots[i]:
                trees[i] = self._bad_tree(reqs[i], f"{len(tree)} nodes (width {self.width}), "
                                                   f"root {int(tree.tokens[0])} (expected {roots[i]})")
        if self.vocab_size is not None and trees:   # per tree, on the trees themselves: one pass
            toks = np.concatenate([t.tokens for t in trees])
            starts = np.zeros(len(trees), np.int64)
            np.cumsum([len(t) for t in trees[:-1]], out=starts[1:])
            lo, hi = np.minimum.reduceat(toks, starts), np.maximum.reduceat(toks, starts)
            for i in np.flatnonzero((lo < 0) | (hi >= self.vocab_size)):
                trees[i] = self._bad_tree(reqs[i], f"token ids outside [0, {self.vocab_size})")
        if self.policy is not None:  # cut to the goodput-maximising sizes (prefixes: still valid)
            trees = self.policy.apply(self.drafter, rids, trees, [self.width] * len(rids))
        width = self.width
        if self.policy is not None or self.tight:   # pack to the widest tree of the step
            width = max((len(t) for t in trees), default=1)
        packed = pack_trees(trees, width)           # once, at the step's width
        step = PackedStep(rids, trees, packed.tokens.astype(np.int64).reshape(-1),
                          packed.mask.reshape(-1), width)
        self._pending = step
        self.stats["steps"] += 1
        self.stats["proposed_nodes"] += int(packed.sizes.sum()) - len(rids)
        return step

    def _bad_tree(self, req: ReqView, why: str) -> DraftTree:
        self.stats["bad_trees"] += 1
        logger.warning("specplug: %s proposed a broken tree for request %s (%s); "
                       "verifying the root alone and restarting the request",
                       type(self.drafter).__name__, req.rid, why)
        self._length[req.rid] = -1  # a length no request has: restarted at the next prepare
        return DraftTree.single(int(req.last_token))

    def feedback(self, accept_tokens: np.ndarray, accept_lens: np.ndarray,
                 target_topk: np.ndarray | None = None, target_probs: np.ndarray | None = None) -> None:
        """``accept_tokens`` [B, >=max(accept_lens)], ``accept_lens`` [B] (bonus included),
        ``target_topk`` [B, W, k] or None, ``target_probs`` [B, W, k] (the target's
        probabilities of those ids, for drafters with ``uses_topk_probs``) or None.
        Applies to the trees of the last :meth:`prepare`."""
        step, self._pending = self._pending, None
        if step is None:
            raise RuntimeError("feedback() without a preceding prepare()")
        lens = np.asarray(accept_lens).astype(np.int64).reshape(-1)
        if lens.shape[0] != len(step.rids):
            raise RuntimeError(f"feedback for {lens.shape[0]} requests, prepared {len(step.rids)}")
        toks = np.asarray(accept_tokens).reshape(len(step.rids), -1)
        rids, trees, accepted, topks = [], [], [], []
        for i, rid in enumerate(step.rids):
            if self._length.get(rid, -1) < 0:  # broken tree (restarts next step), or finished
                continue
            n = len(step.trees[i])
            rids.append(rid)
            trees.append(step.trees[i])
            accepted.append(toks[i, : lens[i]])
            if target_topk is None:
                topks.append(None)
            elif target_probs is not None and self.topk_probs:
                topks.append((target_topk[i, :n], target_probs[i, :n]))
            else:
                topks.append(target_topk[i, :n])
            self._length[rid] += int(lens[i])
        if rids:
            self.drafter.observe_batch(rids, trees, accepted, topks if target_topk is not None else None)
        self.stats["verified_requests"] += len(step.rids)
        self.stats["accepted_tokens"] += int(lens.sum())

    @property
    def mean_accepted(self) -> float:
        """Tokens committed per request-step (MAT) so far."""
        n = self.stats["verified_requests"]
        return self.stats["accepted_tokens"] / n if n else 0.0
