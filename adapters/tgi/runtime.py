"""Engine-free bookkeeping for TGI's chain speculation (no TGI, no torch imports).

TGI verifies one chain of exactly ``speculate`` draft tokens per row: the target's
chosen token at each position is compared with the draft token there, and tokens
are accepted up to the first mismatch (then one bonus token: the target's own
choice). :class:`ChainSpeculation` sits at TGI's drafting point, called once per
engine step with what TGI knows there (host lists, no tensors):

- ``rids``: the request id of each batch row (``batch.requests[i].id``);
- ``contexts[i]``: the row's committed tokens before this step (``batch.all_input_ids[i]``),
  read only for a row that (re)starts;
- ``next_ids`` / ``accepted_counts``: this step's committed tokens, row after row
  (accepted draft tokens, then the bonus), and how many per row;
- ``verified``: the chains TGI verified this step (``batch.speculative_ids``), or None;
- ``topk``: optional target top-k ids per verified position ``[B, S, k]``.

It feeds the drafter (``start`` for new rows, ``observe`` for the others), asks it for
trees, and returns each tree's best chain cut to ``speculate`` tokens and padded to
exactly ``speculate``. Budget: ``speculate + 1`` nodes per row. TGI verifies only the
chain, so extra tree nodes would cost host time only; ``tree_budget`` asks for more
(measured on SmolLM2/HumanEval, RACER's best chain did not improve with 64 nodes).

Padding: TGI accepts a draft token only where it equals the token the target chose
there (greedy or sampled), after an unbroken run of such matches. Acceptance is
therefore lossless for *any* deterministic draft, including filler: a padded position
is an ordinary guess that is rejected unless the target happens to choose that very
token, in which case it is the target's own token. The filler repeats the chain's
last token (the root when the chain is empty): a valid id, so the engine can embed it.
Draft tokens outside ``[0, vocab_size)`` end the chain (they would crash the model).

Per-request state lives between the first step that sees a request and
:meth:`ChainSpeculation.finish` (TGI: ``filter`` dropping it, the batch finishing);
requests not seen for ``max_idle_steps`` steps, or beyond ``max_requests``, are evicted
(least recently seen first), so memory stays bounded when TGI drops a batch without
telling (warm-up, ``ClearCache``).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Hashable, Mapping, Sequence

import numpy as np

from specplug.drafters import registry
from specplug.drafters.errors import ConfigError
from specplug.drafters.tree import DraftTree

__all__ = ["ChainSpeculation", "tgi_chain", "pad_chain", "split_accepted", "consistent"]


def pad_chain(tokens: Sequence[int], root: int, speculate: int,
              vocab_size: int | None = None) -> np.ndarray:
    """``tokens`` cut to ``speculate`` (and before the first id outside the vocabulary),
    padded to exactly ``speculate`` by repeating the last kept token (``root`` if none)."""
    out = np.empty(speculate, np.int64)
    toks = np.asarray(tokens, dtype=np.int64)[:speculate]
    if vocab_size is not None and toks.size:
        bad = np.flatnonzero((toks < 0) | (toks >= vocab_size))
        if bad.size:
            toks = toks[: bad[0]]
    n = toks.shape[0]
    out[:n] = toks
    out[n:] = toks[-1] if n else root
    return out


def tgi_chain(tree: DraftTree, speculate: int, vocab_size: int | None = None) -> np.ndarray:
    """The tree's best chain as TGI's ``[speculate]`` row of draft ids (see :func:`pad_chain`)."""
    return pad_chain(tree.chain_tokens(speculate), int(tree.tokens[0]), speculate, vocab_size)


def split_accepted(next_ids: Sequence[int], accepted_counts: Sequence[int]) -> list[list[int]]:
    """TGI's flat accepted ids (row after row) -> one list per row."""
    out, pos = [], 0
    for n in accepted_counts:
        n = int(n)
        out.append([int(t) for t in next_ids[pos: pos + n]])
        pos += n
    if pos != len(next_ids):
        raise ValueError(f"accepted counts sum to {pos}, but {len(next_ids)} ids were committed")
    return out


def consistent(accepted: Sequence[int], verified: Sequence[int]) -> bool:
    """True when ``accepted`` is a verification outcome of chain ``verified``: a matching
    prefix of it, then one bonus token."""
    k = len(accepted) - 1
    return 0 <= k <= len(verified) and list(accepted[:k]) == [int(t) for t in verified[:k]]


class ChainSpeculation:
    """A specplug drafter behind TGI's chain speculation, keyed by request id."""

    def __init__(self, algorithm: str, options: Mapping[str, Any] | None = None, *,
                 max_idle_steps: int = 1024, max_requests: int = 4096, drafter=None,
                 tree_budget: int | None = None):
        self.spec = registry.get(algorithm)
        if self.spec.peer:
            raise ConfigError(f"algorithm {self.spec.name!r} is a benchmark peer (another engine's drafter), "
                              f"not a TGI speculation algorithm; choose one of "
                              f"{', '.join(n for n in registry.names() if not registry.get(n).peer)}")
        if self.spec.extra.get("needs_runner"):
            raise ConfigError(f"algorithm {self.spec.name!r} drafts with the target's own first layers; TGI's "
                              f"speculator hook sees only final hidden states and verifies fixed-width chains, "
                              f"so specplug cannot run it in TGI (docs/del.md); use the embedded engine")
        self.options = registry.validate_options(self.spec.name, options)
        if max_idle_steps < 1 or max_requests < 1:
            raise ConfigError("max_idle_steps and max_requests must be >= 1")
        self.max_idle_steps = int(max_idle_steps)
        self.max_requests = int(max_requests)
        self.drafter = drafter
        self.tree_budget = None if tree_budget is None else int(tree_budget)
        self.vocab_size: int | None = None if drafter is None else drafter.vocab_size
        self._root: dict[Hashable, int] = {}          # last committed token per request
        self._seen: OrderedDict[Hashable, int] = OrderedDict()  # request -> last step seen
        self.step = 0
        self.resyncs = 0
        # acceptance statistics over decode rows that verified a chain
        self.verify_rows = 0
        self.accepted_tokens = 0

    # ------------------------------------------------------------------ state
    @property
    def uses_target_topk(self) -> bool:
        return bool(self.spec.uses_target_topk or getattr(self.drafter, "uses_target_topk", False))

    @property
    def topk(self) -> int:
        return int(getattr(self.drafter, "topk", 8) or 8)

    def ensure_drafter(self, vocab_size: int):
        if self.drafter is None:
            self.drafter = registry.create(self.spec.name, int(vocab_size), self.options)
            self.vocab_size = int(vocab_size)
        return self.drafter

    def active_requests(self) -> int:
        return len(self._root)

    def budget(self, speculate: int) -> int:
        """Tree nodes asked of the drafter per row when TGI verifies ``speculate`` tokens."""
        if self.tree_budget is not None:
            return max(speculate + 1, self.tree_budget)
        return speculate + 1

    def known(self, rid) -> bool:
        return rid in self._root

    def mean_accepted(self) -> float:
        """Tokens committed per verify step (accepted drafts + bonus), over decode rows."""
        return self.accepted_tokens / self.verify_rows if self.verify_rows else 0.0

    def finish(self, rids) -> None:
        for rid in rids:
            if self._root.pop(rid, None) is not None and self.drafter is not None:
                self.drafter.finish(rid)
            self._seen.pop(rid, None)

    def retain(self, all_rids, kept_rids) -> None:
        """A batch of ``all_rids`` was filtered down to ``kept_rids``: finish the others."""
        kept = set(kept_rids)
        self.finish([r for r in all_rids if r not in kept])

    def reset(self) -> None:
        self.finish(list(self._root))

    def end_step(self) -> None:
        """Advance the step clock; evict requests idle too long, then beyond the cap."""
        self.step += 1
        horizon = self.step - self.max_idle_steps
        stale = []
        for rid, seen in self._seen.items():   # oldest first
            if seen >= horizon and len(self._seen) - len(stale) <= self.max_requests:
                break
            stale.append(rid)
        if stale:
            self.finish(stale)

    # ------------------------------------------------------------------ one engine step
    def draft(self, rids: Sequence[Hashable], contexts: Sequence[Sequence[int]],
              next_ids: Sequence[int], accepted_counts: Sequence[int], speculate: int, *,
              vocab_size: int, verified: Sequence[Sequence[int]] | None = None,
              prefill: bool = False, topk: np.ndarray | None = None) -> np.ndarray:
        """Observe this step's outcome and return the next drafts, int64 ``[B, speculate]``."""
        b = len(rids)
        if len(accepted_counts) != b or len(contexts) != b:
            raise ValueError(f"{b} request ids but {len(accepted_counts)} accepted counts and "
                             f"{len(contexts)} contexts")
        if verified is not None and len(verified) != b:
            raise ValueError(f"{b} request ids but {len(verified)} verified chains")
        drafter = self.ensure_drafter(vocab_size)
        accepted = split_accepted(next_ids, accepted_counts)
        obs_rids, obs_trees, obs_acc, obs_topk = [], [], [], []
        for i, rid in enumerate(rids):
            acc = accepted[i]
            if not acc:
                raise ValueError(f"row {i} (request {rid!r}) committed no token")
            chain = [] if verified is None else verified[i]
            fresh = prefill or rid not in self._root
            if not fresh and not consistent(acc, chain):
                fresh = True       # our record and the engine disagree: rebuild from the engine
                self.resyncs += 1
            if fresh:
                if rid in self._root:
                    drafter.finish(rid)
                drafter.start(rid, [int(t) for t in contexts[i]] + acc)
            else:
                tree = DraftTree.chain(self._root[rid], chain)
                obs_rids.append(rid)
                obs_trees.append(tree)
                obs_acc.append(acc)
                obs_topk.append(None if topk is None else np.asarray(topk[i])[: len(tree)])
                if verified is not None:
                    self.verify_rows += 1
                    self.accepted_tokens += len(acc)
            self._root[rid] = acc[-1]
            self._seen[rid] = self.step
            self._seen.move_to_end(rid)
        if obs_rids:
            drafter.observe_batch(obs_rids, obs_trees, obs_acc,
                                  None if topk is None else obs_topk)
        out = np.empty((b, speculate), np.int64)
        if speculate <= 0:
            return out
        trees = drafter.propose(list(rids), [self.budget(speculate)] * b)
        for i, tree in enumerate(trees):
            out[i] = tgi_chain(tree, speculate, vocab_size)
        return out
