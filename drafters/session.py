"""The engine-side drafting session: the one step loop every engine adapter drives.

One :class:`DraftSession` per engine worker (per TP rank) stands between the engine and a
drafter. Per engine step the adapter translates its own tensors into two calls:

1. :meth:`DraftSession.propose` with a :class:`RequestView` per batch row: a request seen
   for the first time, or whose committed length no longer matches what the drafter was
   fed (a retraction, a missed step, a broken tree last step), is (re)started with its
   full context; then one batched ``drafter.propose``; every tree is checked against the
   contract (size within budget, root = last committed token, ids inside the vocabulary)
   and a broken one is replaced by its root and its request restarted next step, logged,
   never raised; a budget policy, when set, cuts the trees to the sizes that pay for their
   verification. The returned :class:`Step` holds the trees the engine must verify
   (:meth:`Step.pack` pads them; :meth:`DraftSession.propose_chains` gives chain engines
   each tree's best chain instead).
2. :meth:`DraftSession.observe` with what the engine verified: the committed tokens per
   request (flat, with counts) and, for drafters that learn from logits, the target's top-k
   at every verified node ([B, W, k] as engines compute it on the device). The session
   builds one :class:`Feedback` and calls ``drafter.observe_batch`` once.

Requests leave with :meth:`finish` (finished, aborted), :meth:`retain` (a batch filtered
down to some requests) or, for engines that never say, the idle eviction of
:meth:`end_step`. A drafter that raises costs its requests a restart and that step's
speculation, never the batch: the error is logged (with its traceback, the first few
times) and counted in :attr:`stats`.

Drafters that need the target model (``needs_runner``) get it here: the adapter passes the
runners its engine implements, by name; an engine without the one a drafter needs refuses
it with a ConfigError naming the engines that have it.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .base import Drafter
from .budget import BudgetPolicy
from .calibration import LengthCalibration, expected_lengths
from .errors import ConfigError
from .feedback import Feedback, TopK, offsets_of
from .sampling import GREEDY, SamplingParams
from .tree import DraftTree, PackedTrees, pack_trees

__all__ = ["RequestView", "Step", "SessionStats", "DraftSession", "flat_rows", "padded_chain", "expected_chain"]

logger = logging.getLogger("specplug")

RequestId = Hashable

#: log at most this many drafter errors with their traceback
MAX_ERROR_LOGS = 5


@dataclass
class RequestView:
    """What the session needs to know about one request of an engine batch."""

    rid: RequestId
    length: int  # committed tokens (prompt + output)
    last_token: int  # the newest committed token (the next root)
    context: Callable[[], Sequence[int]]  # all committed tokens, read only on (re)start
    sampling: SamplingParams = GREEDY  # how the engine samples this request's tokens


@dataclass
class Step:
    """The trees one engine step verifies, in the order of the batch rows."""

    rids: list
    trees: list[DraftTree]
    draft_s: float = 0.0  # propose + checks + budget cut

    @property
    def width(self) -> int:
        """Nodes of the largest tree (1: nothing drafted)."""
        return max((len(t) for t in self.trees), default=1)

    @property
    def drafted_nodes(self) -> int:
        return sum(len(t) for t in self.trees) - len(self.trees)

    def pack(self, width: int | None = None) -> PackedTrees:
        """The trees padded to ``width`` (default: the widest tree) for one forward pass."""
        return pack_trees(self.trees, width)


@dataclass
class SessionStats:
    """Counters since the session started (``specplug`` logs them; benchmarks record them)."""

    steps: int = 0
    proposed_nodes: int = 0  # draft nodes below the roots, after the budget cut
    proposed_requests: int = 0  # request-steps proposed
    speculated_requests: int = 0  # ... of which kept a draft node after the budget cut
    verified_requests: int = 0  # request-steps observed
    accepted_tokens: int = 0  # tokens committed in those (bonus included)
    restarts: int = 0  # known requests started again from their context
    bad_trees: int = 0  # trees that broke the contract (replaced by their root)
    drafter_errors: int = 0  # exceptions raised by the drafter
    evicted: int = 0  # requests dropped by the idle / count bounds
    draft_s: float = 0.0
    observe_s: float = 0.0

    @property
    def mean_accepted(self) -> float:
        """Tokens committed per verified request-step (MAT)."""
        return self.accepted_tokens / self.verified_requests if self.verified_requests else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "mean_accepted": self.mean_accepted}


def flat_rows(per_row: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Rows [B, W, ...] -> the first ``sizes[b]`` entries of each row, flat [sum(sizes), ...]
    (one vectorised gather; the order is row after row)."""
    w = per_row.shape[1]
    return per_row[np.arange(w)[None, :] < np.asarray(sizes)[:, None]]


@dataclass
class _Request:
    length: int  # committed tokens the drafter has seen; -1: restart
    pending: DraftTree | None = None  # the tree the engine verifies this step
    seen: int = 0  # step clock of the last propose
    sampling: SamplingParams = GREEDY  # what the drafter was told (set_sampling)


class DraftSession:
    """One engine worker's drafting loop around ``drafter`` (see the module doc).

    ``vocab_size``: the target's (draft ids must lie below it); ``policy``: a load-aware
    budget policy, or None for the fixed budgets the engine asks; ``runners``: the model
    interfaces this engine implements, name -> factory (called once, on first need);
    ``engine``: the engine's name, for messages; ``max_idle_steps`` / ``max_requests``:
    bounds for engines that drop requests without saying (TGI's warm-up, vLLM)."""

    def __init__(
        self,
        drafter: Drafter,
        vocab_size: int | None = None,
        *,
        policy: BudgetPolicy | None = None,
        runners: Mapping[str, Callable[[], Any]] | None = None,
        engine: str = "this engine",
        max_idle_steps: int | None = None,
        max_requests: int | None = None,
    ):
        if max_idle_steps is not None and max_idle_steps < 1 or max_requests is not None and max_requests < 1:
            raise ConfigError("max_idle_steps and max_requests must be >= 1")
        self.drafter = drafter
        self.vocab_size = drafter.vocab_size if vocab_size is None else int(vocab_size)
        self.policy = policy
        self.engine = engine
        self.max_idle_steps, self.max_requests = max_idle_steps, max_requests
        self.topk = drafter.feedback_topk  # top-k width engines compute (0: none)
        self.topk_probs = drafter.feedback_probs  # ... with the probabilities of those ids
        self.stats = SessionStats()
        self.runner = self._bind_runner(runners or {})
        self._req: OrderedDict[RequestId, _Request] = OrderedDict()  # least recently seen first
        self._clock = 0
        # realised / expected accepted length for drafters that keep none (pld, suffix):
        # the policy then prices their nodes at what they were worth so far
        self._lengths: LengthCalibration | None = None

    @property
    def name(self) -> str:
        return self.drafter.name or type(self.drafter).__name__

    def _bind_runner(self, runners: Mapping[str, Callable[[], Any]]) -> Any:
        need = self.drafter.needs_runner
        if not need:
            return None
        if need not in runners:
            have = ", ".join(sorted(runners)) or "none"
            raise ConfigError(
                f"algorithm {self.name!r} drafts with the target's own layers through a {need!r} "
                f"runner, which {self.engine} does not provide (its runners: {have}); see "
                f"docs/del.md for the engines that do"
            )
        runner = runners[need]()
        self.drafter.bind(runner)
        return runner

    # ------------------------------------------------------------------ lifecycle
    @property
    def active(self) -> int:
        """Requests holding drafter state."""
        return len(self._req)

    def known(self, rid: RequestId) -> bool:
        return rid in self._req

    def pending(self, rid: RequestId) -> DraftTree | None:
        """The tree proposed for ``rid`` and not yet observed."""
        req = self._req.get(rid)
        return None if req is None else req.pending

    def start(self, rid: RequestId, context_ids: Sequence[int], context_topk: TopK | None = None) -> None:
        """Admit a request explicitly (engines that know its prefill: top-k seeding)."""
        if rid in self._req:
            self._call(self.drafter.finish, rid, what="finish")
            self.stats.restarts += 1
        ok, _ = self._call(self.drafter.start, rid, context_ids, context_topk, what=f"start of request {rid!r}")
        if ok:
            self._req[rid] = _Request(len(context_ids), seen=self._clock)
        else:  # nothing to draft from: a later step tries again
            self._req.pop(rid, None)

    def finish(self, rid: RequestId) -> None:
        """A request finished, was aborted or left: free its drafter state (unknown: no-op)."""
        if self._req.pop(rid, None) is not None:
            self._call(self.drafter.finish, rid, what="finish")
        if self.policy is not None:
            self.policy.forget(rid)
        if self._lengths is not None:
            self._lengths.forget(rid)

    def retain(self, rids: Sequence[RequestId]) -> list:
        """Finish every request not in ``rids``; return those finished."""
        keep = set(rids)
        gone = [rid for rid in self._req if rid not in keep]
        for rid in gone:
            self.finish(rid)
        return gone

    def reset(self) -> None:
        """Finish every request (the engine cleared its cache)."""
        for rid in list(self._req):
            self.finish(rid)

    def end_step(self) -> None:
        """Advance the step clock; evict requests idle too long, then beyond the count cap."""
        self._clock += 1
        if self.max_idle_steps is None and self.max_requests is None:
            return
        horizon = self._clock - (self.max_idle_steps or self._clock + 1)
        cap = self.max_requests or len(self._req)
        stale: list[RequestId] = []
        for rid, req in self._req.items():  # oldest first
            if req.seen >= horizon and len(self._req) - len(stale) <= cap:
                break
            stale.append(rid)
        for rid in stale:
            self.finish(rid)
        self.stats.evicted += len(stale)

    # ------------------------------------------------------------------ one step
    def propose(
        self, reqs: Sequence[RequestView], budgets: Sequence[int] | np.ndarray | int, *, chain: int | None = None
    ) -> Step:
        """(Re)start what needs it, draft every request's tree, check and cut them.

        ``chain``: for engines that verify ragged chains of 0..``chain`` guesses (vLLM), each
        tree is cut to its :func:`expected_chain` before the budget policy, which then
        chooses each chain's length (the root alone where drafting does not pay)."""
        t0 = time.perf_counter()
        rids = [r.rid for r in reqs]
        budgets = np.broadcast_to(np.asarray(budgets, np.int64), (len(rids),))
        for r in reqs:
            req = self._req.get(r.rid)
            if req is None or req.length != r.length:
                self._restart(r)
                req = self._req.get(r.rid)
            if req is not None and req.sampling is not r.sampling and req.sampling != r.sampling:
                self._tell_sampling(req, r)
        live = [i for i, r in enumerate(reqs) if r.rid in self._req]
        trees: list[DraftTree] = [DraftTree.single(int(r.last_token)) for r in reqs]
        if live:
            ok, drafted = self._call(
                self.drafter.propose, [rids[i] for i in live], self._draft_budgets(rids, budgets, live), what="propose"
            )
            if ok and len(drafted) != len(live):
                self._error(f"propose returned {len(drafted)} trees for {len(live)} requests")
                drafted = None
            if drafted is None:  # the whole call failed: its requests restart next step
                for i in live:
                    self._req[rids[i]].length = -1
            else:
                for i, tree in zip(live, drafted):
                    trees[i] = tree
                self._check(reqs, trees, budgets, live)
        if chain is not None:
            trees = [t if len(t) == 1 else t.subtree(expected_chain(t, chain)) for t in trees]
        if self.policy is not None and live:
            trees = self.policy.apply(trees, budgets, self._length_ratios(rids), rids=rids)
        for rid, tree in zip(rids, trees):
            req = self._req.get(rid)
            if req is not None:
                req.seen = self._clock
                self._req.move_to_end(rid)
                req.pending = tree if req.length >= 0 else None
        step = Step(rids, trees)
        step.draft_s = time.perf_counter() - t0
        self.stats.steps += 1
        self.stats.proposed_nodes += step.drafted_nodes
        self.stats.proposed_requests += len(trees)
        self.stats.speculated_requests += sum(len(t) > 1 for t in trees)
        self.stats.draft_s += step.draft_s
        return step

    def propose_chains(self, reqs: Sequence[RequestView], budgets, length: int) -> tuple[Step, np.ndarray]:
        """For engines that verify chains of exactly ``length`` tokens per row (TGI): each
        tree's best chain (:meth:`DraftTree.best_chain`), padded to ``length`` by repeating
        its last token (the root when empty). Returns the step (its trees are the chains as
        verified, padding included, ``node_data`` kept, padding -1) and the draft ids
        [B, length] int64. Padding is lossless: a padded position is an ordinary guess,
        accepted only where the target chooses that very token."""
        step = self.propose(reqs, budgets)
        out = np.empty((len(reqs), max(length, 0)), np.int64)
        if length <= 0:
            return step, out
        for i, tree in enumerate(step.trees):
            chain = padded_chain(tree.subtree(tree.best_chain(length)), length)
            out[i] = chain.tokens[1:]
            step.trees[i] = chain
            req = self._req.get(step.rids[i])
            if req is not None and req.pending is not None:
                req.pending = chain
        return step, out

    def observe(
        self,
        rids: Sequence[RequestId],
        accepted: np.ndarray,
        counts: np.ndarray,
        topk_ids: np.ndarray | None = None,
        topk_probs: np.ndarray | None = None,
    ) -> float:
        """What the engine committed for ``rids`` after verifying their pending trees.

        ``accepted``: the committed tokens, request after request (accepted drafts, then the
        bonus); ``counts[b]``: how many for ``rids[b]``; ``topk_ids`` [B, W, k] (W >= each
        tree's size) and ``topk_probs`` of the same shape: the target's top-k at every
        verified node, or None. Requests without a pending tree (broken tree, unknown) are
        skipped. Returns the seconds spent."""
        t0 = time.perf_counter()
        counts = np.asarray(counts, np.int64).reshape(-1)
        accepted = np.asarray(accepted).reshape(-1)
        if counts.shape[0] != len(rids) or int(counts.sum()) != accepted.shape[0]:
            raise ValueError(
                f"observe: {len(rids)} requests, {counts.shape[0]} counts summing to "
                f"{int(counts.sum())}, {accepted.shape[0]} committed tokens"
            )
        rows, trees = [], []
        for b, rid in enumerate(rids):
            req = self._req.get(rid)
            if req is not None and req.pending is not None and counts[b] > 0:
                rows.append(b)
                trees.append(req.pending)
        self.stats.verified_requests += len(rids)
        self.stats.accepted_tokens += int(counts.sum())
        if not rows:
            return self._observed(t0)
        sel = np.asarray(rows, np.int64)
        observed = np.zeros(len(rids), np.bool_)
        observed[sel] = True
        take = np.repeat(observed, counts)  # the observed rows' committed tokens
        topk = None
        if topk_ids is not None and self.topk:
            sizes = np.fromiter((len(t) for t in trees), np.int64, len(trees))
            probs = None
            if topk_probs is not None and self.topk_probs:
                probs = flat_rows(np.asarray(topk_probs)[sel], sizes)
            topk = TopK.of(flat_rows(np.asarray(topk_ids)[sel], sizes), probs)
        feedback = Feedback(
            [rids[b] for b in rows],
            trees,
            np.ascontiguousarray(accepted[take], np.int32),
            offsets_of(counts[sel]),
            topk,
        )
        for b in rows:
            req = self._req[rids[b]]
            req.length += int(counts[b])
            req.pending = None
        if self._lengths is not None:
            self._lengths.update(feedback.rids, expected_lengths(trees), counts[sel] - 1)
        ok, _ = self._call(self.drafter.observe_batch, feedback, what="observe")
        if not ok:
            for rid in feedback.rids:  # state is suspect: rebuild from the context
                self._req[rid].length = -1
        return self._observed(t0)

    # ------------------------------------------------------------------ internals
    def _observed(self, t0: float) -> float:
        dt = time.perf_counter() - t0
        self.stats.observe_s += dt
        return dt

    def _tell_sampling(self, req: _Request, r: RequestView) -> None:
        """Tell the drafter a request's sampling settings (they differ from what it has)."""
        ok, _ = self._call(self.drafter.set_sampling, r.rid, r.sampling, what=f"set_sampling of request {r.rid!r}")
        if ok:
            req.sampling = r.sampling

    def _restart(self, r: RequestView) -> None:
        ctx = r.context()
        self.start(r.rid, ctx)
        req = self._req.get(r.rid)
        if req is not None:
            req.length = int(r.length)

    def _check(self, reqs: Sequence[RequestView], trees: list[DraftTree], budgets: np.ndarray, live: list[int]) -> None:
        """Replace trees that break the contract by their root (one vectorised pass)."""
        sizes = np.fromiter((len(trees[i]) for i in live), np.int64, len(live))
        firsts = np.fromiter((int(trees[i].tokens[0]) for i in live), np.int64, len(live))
        roots = np.fromiter((int(reqs[i].last_token) for i in live), np.int64, len(live))
        toks = np.concatenate([trees[i].tokens for i in live])
        starts = offsets_of(sizes)[:-1]
        lo, hi = np.minimum.reduceat(toks, starts), np.maximum.reduceat(toks, starts)
        bad = (sizes > budgets[live]) | (firsts != roots) | (lo < 0) | (hi >= self.vocab_size)
        for j in np.flatnonzero(bad).tolist():
            i = live[j]
            why = (
                f"{sizes[j]} nodes over the budget {int(budgets[i])}"
                if sizes[j] > budgets[i]
                else f"root {firsts[j]}, expected the last committed token {roots[j]}"
                if firsts[j] != roots[j]
                else f"token ids outside [0, {self.vocab_size})"
            )
            self.stats.bad_trees += 1
            logger.warning(
                "specplug: %s proposed a broken tree for request %s (%s); verifying the root alone "
                "and restarting the request",
                self.name,
                reqs[i].rid,
                why,
            )
            self._req[reqs[i].rid].length = -1  # a length no request has: restarted next step
            trees[i] = DraftTree.single(int(roots[j]))

    def _draft_budgets(self, rids: list, budgets: np.ndarray, live: list[int]) -> list[int]:
        """What the drafter is asked for: the engine's budgets, capped by the policy at what
        it can use this step (:meth:`.budget.BudgetPolicy.draft_caps`)."""
        if self.policy is None:
            return budgets[live].tolist()
        return self.policy.draft_caps([rids[i] for i in live], budgets[live]).tolist()

    def _length_ratios(self, rids: list) -> np.ndarray | None:
        ok, ratios = self._call(self.drafter.length_ratios, rids, what="length_ratios")
        if not ok or ratios is not None:
            return ratios
        if self._lengths is None:
            self._lengths = LengthCalibration()
        return np.array([self._lengths.ratio(rid) for rid in rids])

    def _call(self, fn: Callable, *args: Any, what: str) -> tuple[bool, Any]:
        """(True, ``fn(*args)``), or (False, None) after logging and counting its exception."""
        try:
            return True, fn(*args)
        except Exception as e:  # noqa: BLE001 -- a drafter bug must not take the batch down
            self._error(f"{what} raised {type(e).__name__}: {e}", exc=True)
            return False, None

    def _error(self, message: str, exc: bool = False) -> None:
        self.stats.drafter_errors += 1
        if self.stats.drafter_errors <= MAX_ERROR_LOGS:
            logger.error(
                "specplug: the %s drafter failed (%s); its requests restart and this step verifies their roots alone",
                self.name,
                message,
                exc_info=exc,
            )


def padded_chain(chain: DraftTree, length: int) -> DraftTree:
    """``chain`` (root + m <= length guesses) extended to ``length`` guesses by repeating its
    last token (scores 0, ``node_data`` -1): what a fixed-length chain verifier gets."""
    n, pad = len(chain), length + 1 - len(chain)
    if pad <= 0:
        return chain
    tokens = np.concatenate([chain.tokens, np.full(pad, chain.tokens[-1], np.int32)])
    scores = np.concatenate([chain.scores, np.zeros(pad, np.float32)])
    data = None if chain.node_data is None else np.concatenate([chain.node_data, np.full(pad, -1, np.int32)])
    return DraftTree(tokens, np.arange(-1, n + pad - 1, dtype=np.int32), scores, validate=False, node_data=data)


def expected_chain(tree: DraftTree, max_len: int) -> np.ndarray:
    """Node indices (root first) of the root path of at most ``max_len`` guesses with the
    largest expected accepted length, the sum of its nodes' scores (each a path value: the
    estimated probability that the node is reached and accepted). Unlike
    :meth:`DraftTree.best_chain` (the best child at each level), a branch whose first node
    scores a little lower but leads deeper wins. Ties: the shorter path (cheaper to verify)."""
    n = len(tree)
    if n == 1 or max_len <= 0:
        return np.zeros(1, np.int32)
    depth, parents = tree.depth, tree.parents
    value = np.zeros(n, np.float64)
    scores = np.clip(tree.scores.astype(np.float64), 0.0, None)
    for d in range(1, min(int(depth.max()), int(max_len)) + 1):  # one vectorised pass per level
        at = np.flatnonzero(depth == d)
        value[at] = value[parents[at]] + scores[at]
    value[depth > max_len] = -np.inf
    best = int(np.lexsort((depth, -value))[0])
    return tree.path_to(best)
