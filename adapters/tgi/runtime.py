"""TGI's chain speculation onto :class:`specplug.drafters.session.DraftSession` (no TGI, no torch).

TGI verifies one chain of exactly ``speculate`` draft tokens per row: drafts are accepted up
to the first one that differs from the target's choice, then one bonus token (the target's).
:meth:`ChainSpeculation.draft` runs at TGI's drafting point once per step with host values:
request ids (``batch.requests[i].id``), committed tokens before the step
(``batch.all_input_ids[i]``), this step's committed tokens row after row with their counts,
the chains TGI verified (``batch.speculative_ids``, or None) and the target's top-k per
verified position. It **observes** the rows whose verified chain is the one the session has
pending, with an outcome that fits it (a matching prefix, then a bonus); any other row (TGI
verified its own n-gram after a fallback, or nothing) is not observed, so its committed
length no longer matches and the session restarts it from TGI's tokens. Prefill rows start
afresh (warm-up reuses ids). Then it **proposes** with :meth:`DraftSession.propose_chains`:
each tree's best chain padded to ``speculate`` (lossless under TGI's exact-match check),
pending as verified and with the drafter's per-node data (RACER's acceptance calibration
learns under TGI too). Rows the drafter failed this step (it raised, broke its tree, could
not start) are flagged in :attr:`ChainSpeculation.fallback_rows`: the TGI glue drafts them
with TGI's own n-gram. Budget: ``speculate + 1`` nodes (TGI verifies only the chain), or
``tree_budget``. The session bounds state (``max_idle_steps``, ``max_requests``) for whatever
drops a batch unseen; warm-up and ``ClearCache`` are told by their patches.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np

from specplug.drafters import registry
from specplug.drafters.errors import ConfigError
from specplug.drafters.sampling import GREEDY, SamplingParams
from specplug.drafters.session import DraftSession, RequestView, SessionStats, padded_chain
from specplug.drafters.tree import DraftTree

__all__ = ["ChainSpeculation", "tgi_chain", "request_sampling"]


def request_sampling(parameters) -> SamplingParams:
    """A TGI request's ``NextTokenChooserParameters`` (``do_sample`` false, or temperature 0:
    greedy; top_k 0 and top_p 1: off) as the drafters' sampling settings."""
    if parameters is None or not getattr(parameters, "do_sample", False):
        return GREEDY
    temperature = float(getattr(parameters, "temperature", 1.0) or 1.0)
    top_k = max(int(getattr(parameters, "top_k", 0) or 0), 0)
    top_p = float(getattr(parameters, "top_p", 1.0) or 1.0)
    return SamplingParams(temperature, top_k, min(top_p, 1.0))


def tgi_chain(tree: DraftTree, speculate: int, vocab_size: int | None = None) -> np.ndarray:
    """The ``[speculate]`` row TGI would verify for ``tree``: its best chain, cut before the
    first id outside the vocabulary, padded by repeating the last kept token (the root if none)."""
    nodes = tree.best_chain(speculate)
    if vocab_size is not None:
        bad = np.flatnonzero((tree.tokens[nodes] < 0) | (tree.tokens[nodes] >= vocab_size))
        nodes = nodes[: max(int(bad[0]), 1)] if bad.size else nodes
    return padded_chain(tree.subtree(nodes), speculate).tokens[1:].astype(np.int64)


class ChainSpeculation:
    """A specplug drafter behind TGI's chain speculation, keyed by request id."""

    def __init__(
        self,
        algorithm: str,
        options: Mapping[str, Any] | None = None,
        *,
        max_idle_steps: int = 1024,
        max_requests: int = 4096,
        drafter=None,
        tree_budget: int | None = None,
    ):
        self.spec = registry.get(algorithm)
        if self.spec.peer:
            raise ConfigError(
                f"algorithm {self.spec.name!r} is a benchmark peer (another engine's drafter), "
                f"not a TGI speculation algorithm; choose one of "
                f"{', '.join(n for n in registry.names() if not registry.get(n).peer)}"
            )
        if self.spec.needs_runner:  # refused now: the session (which would refuse too) waits for the vocab
            raise ConfigError(
                f"algorithm {self.spec.name!r} drafts with the target's own first layers; TGI's "
                f"speculator hook sees only final hidden states and verifies fixed-width chains, "
                f"so specplug cannot run it in TGI (docs/del.md); use the embedded engine"
            )
        self.options = registry.validate_options(self.spec.name, options)
        if max_idle_steps < 1 or max_requests < 1:
            raise ConfigError("max_idle_steps and max_requests must be >= 1")
        self.bounds = {"max_idle_steps": int(max_idle_steps), "max_requests": int(max_requests)}
        self.tree_budget = None if tree_budget is None else int(tree_budget)
        self.session: DraftSession | None = None
        #: per row of the last :meth:`draft`: True where the drafter gave no chain
        self.fallback_rows = np.zeros(0, np.bool_)
        if drafter is not None:
            self._open(drafter)

    def _open(self, drafter) -> DraftSession:
        self.session = DraftSession(drafter, engine="TGI", **self.bounds)
        return self.session

    def _live(self) -> DraftSession:
        assert self.session is not None, "ensure_drafter first"
        return self.session

    # ------------------------------------------------------------------ state (the session's)
    def ensure_drafter(self, vocab_size: int):
        """The drafter, created on the first step (TGI tells the vocabulary by its scores)."""
        if self.session is None:
            self._open(registry.create(self.spec.name, int(vocab_size), self.options))
        return self._live().drafter

    drafter = property(lambda self: self.session and self.session.drafter)
    #: top-k width TGI computes per verified position (0: the drafter learns nothing from logits)
    topk = property(lambda self: self.session.topk if self.session else 0)
    topk_probs = property(lambda self: bool(self.session and self.session.topk_probs))
    stats = property(lambda self: self.session.stats if self.session else SessionStats())
    #: known requests rebuilt from TGI's tokens (an outcome or verified chain that is not ours)
    resyncs = property(lambda self: self.stats.restarts)

    def mean_accepted(self) -> float:
        """Tokens committed per verify step (accepted drafts + bonus), over observed rows."""
        return self.stats.mean_accepted

    def active_requests(self) -> int:
        return self.session.active if self.session else 0

    def known(self, rid) -> bool:
        return bool(self.session and self.session.known(rid))

    def budget(self, speculate: int) -> int:
        """Tree nodes asked of the drafter per row when TGI verifies ``speculate`` tokens."""
        return max(speculate + 1, self.tree_budget or 0)

    def finish(self, rids) -> None:
        if self.session is not None:
            for rid in rids:
                self.session.finish(rid)

    def retain(self, all_rids, kept_rids) -> None:
        """A batch of ``all_rids`` was filtered down to ``kept_rids``: finish the others (not
        ``session.retain``: requests of other live batches, e.g. one just prefilled, stay)."""
        kept = set(kept_rids)
        self.finish([r for r in all_rids if r not in kept])

    def reset(self) -> None:
        if self.session:
            self.session.reset()

    def end_step(self) -> None:
        """Advance the step clock; evict requests idle too long, then beyond the cap."""
        if self.session:
            self.session.end_step()

    # ------------------------------------------------------------------ one engine step
    def draft(
        self,
        rids: Sequence[Hashable],
        contexts: Sequence[Sequence[int]],
        next_ids: Sequence[int],
        accepted_counts: Sequence[int],
        speculate: int,
        *,
        vocab_size: int,
        verified: Sequence[Sequence[int]] | None = None,
        prefill: bool = False,
        topk: np.ndarray | None = None,
        topk_probs: np.ndarray | None = None,
        sampling: Sequence[SamplingParams] | None = None,
    ) -> np.ndarray:
        """Observe this step's outcome and return the next drafts, int64 ``[B, speculate]``
        (``sampling``: each row's sampling settings, see :func:`request_sampling`; None: greedy)."""
        b = len(rids)
        counts = np.asarray(accepted_counts, np.int64).reshape(-1)
        ids = np.asarray(next_ids, np.int64).reshape(-1)
        if counts.shape[0] != b or len(contexts) != b:
            raise ValueError(f"{b} request ids but {counts.shape[0]} accepted counts and {len(contexts)} contexts")
        if verified is not None and len(verified) != b:
            raise ValueError(f"{b} request ids but {len(verified)} verified chains")
        if (counts < 1).any():
            i = int(np.flatnonzero(counts < 1)[0])
            raise ValueError(f"row {i} (request {rids[i]!r}) committed no token")
        if int(counts.sum()) != ids.shape[0]:
            raise ValueError(f"accepted counts sum to {int(counts.sum())}, but {ids.shape[0]} ids were committed")
        self.ensure_drafter(vocab_size)
        self.fallback_rows = np.zeros(b, np.bool_)
        if b == 0:
            return np.empty((0, max(int(speculate), 0)), np.int64)
        if prefill:
            self.finish(rids)
        elif verified is not None:
            self._observe(rids, ids, counts, np.asarray(verified, np.int64).reshape(b, -1), topk, topk_probs)
        ends = np.cumsum(counts)
        views = [
            RequestView(
                rid,
                len(contexts[i]) + int(counts[i]),
                int(ids[ends[i] - 1]),
                lambda i=i: [*contexts[i], *ids[ends[i] - counts[i] : ends[i]].tolist()],
                GREEDY if sampling is None else sampling[i],
            )
            for i, rid in enumerate(rids)
        ]
        drafts = self._live().propose_chains(views, self.budget(speculate), int(speculate))[1]
        # rows left without a pending chain: the drafter raised, broke its tree or could not
        # start; TGI's own n-gram drafts them this step (their roots alone would waste it)
        self.fallback_rows = np.fromiter((self._live().pending(r) is None for r in rids), np.bool_, b)
        return drafts

    def _observe(self, rids, ids, counts, verified, topk, topk_probs) -> None:
        """Observe the rows whose pending chain is what TGI verified, with an outcome that fits it."""
        b, n = verified.shape
        pending = np.full((b, n), -1, np.int64)
        for i, rid in enumerate(rids):
            tree = self._live().pending(rid)
            if tree is not None and len(tree) == n + 1:
                pending[i] = tree.tokens[1:]
        width = max(n + 1, int(counts.max()))
        placed = np.arange(width)[None, :] < counts[:, None]
        acc = np.full((b, width), -1, np.int64)
        acc[placed] = ids  # row after row, as TGI lays them out
        drafts = np.arange(n)[None, :] < (counts - 1)[:, None]
        ok = (pending == verified).all(1) & (counts <= n + 1) & ((acc[:, :n] == verified) | ~drafts).all(1)
        rows = np.flatnonzero(ok)
        if rows.size:

            def pick(a):
                return None if a is None else np.asarray(a)[rows]

            self._live().observe(
                [rids[i] for i in rows.tolist()], acc[rows][placed[rows]], counts[rows], pick(topk), pick(topk_probs)
            )
