"""Prompt lookup decoding (PLD): match the context's last n-gram earlier in the context and
propose the tokens that followed it, as transformers' ``prompt_lookup_num_tokens`` does
(longest n-gram first; here the most recent match wins, which tracks the local topic)."""

from __future__ import annotations

from functools import partial
from typing import Any, ClassVar

import numpy as np
from numba import njit

from .base import ContextDrafter
from .errors import ConfigError
from .options import Option, resolve_options
from .threads import THREADS_OPTION, DraftThreads, resolve_threads, split_rows
from .tree_build import TreeScratch


@njit(cache=True, nogil=True)
def _continuation_start(ctx, max_ngram, min_ngram):
    """Where the continuation of the most recent earlier occurrence of the context's tail
    n-gram starts (longest n first; n in [min_ngram, max_ngram]), or -1: none."""
    n_ctx = ctx.shape[0]
    for n in range(min(max_ngram, n_ctx - 1), min_ngram - 1, -1):
        tail = n_ctx - n
        for start in range(n_ctx - n - 1, -1, -1):  # windows of ctx[:-1], the tail excluded
            j = 0
            while j < n and ctx[start + j] == ctx[tail + j]:
                j += 1
            if j == n:
                return start + n
    return -1


@njit(cache=True, nogil=True)
def _draft_row(ctx, max_ngram, min_ngram, max_draft, tokens, parents, scores):
    """The chain (root = ctx[-1], then at most ``max_draft`` continuation tokens) into one
    row of a TreeBuffers batch; returns its size."""
    n_ctx = ctx.shape[0]
    tokens[0] = ctx[n_ctx - 1]
    parents[0] = -1
    scores[0] = 1.0
    size = 1
    if max_draft > 0:
        start = _continuation_start(ctx, max_ngram, min_ngram)
        if start >= 0:
            stop = min(n_ctx, start + max_draft)
            for t in range(start, stop):
                tokens[size] = ctx[t]
                parents[size] = size - 1
                scores[size] = 1.0
                size += 1
    return size


def find_continuation(ctx: np.ndarray, max_ngram: int, min_ngram: int, max_draft: int) -> np.ndarray:
    """Tokens that followed the most recent earlier occurrence of the context's tail n-gram."""
    ctx = np.ascontiguousarray(ctx)
    start = _continuation_start(ctx, max_ngram, min_ngram)
    return ctx[:0] if start < 0 else ctx[start : start + max_draft]


#: fewest requests per worker thread in propose: the per-request dispatch holds the GIL,
#: so threads pay only where the compiled match (long contexts) dominates
PROPOSE_MIN_ROWS = 64


class PromptLookupDrafter(ContextDrafter):
    name = "pld"
    OPTIONS: ClassVar[tuple[Option, ...]] = (
        Option("max_ngram", int, 3, "longest n-gram matched against the context tail", 1, 64),
        Option("min_ngram", int, 1, "shortest n-gram tried before giving up", 1, 64),
        Option("max_draft", int, 10, "most draft tokens proposed per step", 1, 1023),
        THREADS_OPTION,
    )
    DEFAULT_BUDGET: ClassVar[int] = 11

    def __init__(self, vocab_size: int, **options: Any):
        o = resolve_options(self.OPTIONS, options, self.name)
        super().__init__(vocab_size)
        if o["min_ngram"] > o["max_ngram"]:
            raise ConfigError(f"pld: min_ngram ({o['min_ngram']}) must not exceed max_ngram ({o['max_ngram']})")
        self.max_ngram, self.min_ngram, self.max_draft = o["max_ngram"], o["min_ngram"], o["max_draft"]
        self.threads = DraftThreads(resolve_threads(o.get("draft_threads", 0)))

    def propose(self, rids, budgets):
        b = np.asarray(budgets, np.int64).reshape(-1)
        drafts = np.minimum(self.max_draft, b - 1)
        width = int(drafts.max()) + 1 if len(rids) else 1
        ranges = split_rows(np.maximum(drafts, 1), self.threads.workers(len(rids), PROPOSE_MIN_ROWS))
        s = TreeScratch(len(rids), width, 1, workers=len(ranges))
        rows = s.buffers
        contexts = [self.context(rid) for rid in rids]

        def chains(first: int, last: int) -> None:
            for i in range(first, last):
                rows.sizes[i] = _draft_row(
                    contexts[i],
                    self.max_ngram,
                    self.min_ngram,
                    int(drafts[i]),
                    rows.tokens[i],
                    rows.parents[i],
                    rows.scores[i],
                )

        self.threads.run([partial(chains, lo, hi) for lo, hi in ranges])
        return s.trees()
