"""Prompt lookup decoding (PLD): match the context's last n-gram earlier in the context and
propose the tokens that followed it, as transformers' ``prompt_lookup_num_tokens`` does
(longest n-gram first; here the most recent match wins, which tracks the local topic)."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .base import ContextDrafter
from .errors import ConfigError
from .options import Option, resolve_options
from .tree import DraftTree


def find_continuation(ctx: np.ndarray, max_ngram: int, min_ngram: int, max_draft: int) -> np.ndarray:
    """Tokens that followed the most recent earlier occurrence of the context's tail n-gram."""
    n_ctx = ctx.shape[0]
    for n in range(min(max_ngram, n_ctx - 1), min_ngram - 1, -1):
        tail = ctx[n_ctx - n :]
        # candidate windows start at 0..n_ctx-n-1 (the tail itself excluded)
        windows = sliding_window_view(ctx[: n_ctx - 1], n)
        hits = np.flatnonzero((windows == tail).all(axis=1))
        if hits.shape[0]:
            start = int(hits[-1]) + n
            return ctx[start : start + max_draft]
    return ctx[:0]


class PromptLookupDrafter(ContextDrafter):
    name = "pld"
    OPTIONS: ClassVar[tuple[Option, ...]] = (
        Option("max_ngram", int, 3, "longest n-gram matched against the context tail", 1, 64),
        Option("min_ngram", int, 1, "shortest n-gram tried before giving up", 1, 64),
        Option("max_draft", int, 10, "most draft tokens proposed per step", 1, 1023),
    )
    DEFAULT_BUDGET: ClassVar[int] = 11

    def __init__(self, vocab_size: int, **options: Any):
        o = resolve_options(self.OPTIONS, options, self.name)
        super().__init__(vocab_size)
        if o["min_ngram"] > o["max_ngram"]:
            raise ConfigError(f"pld: min_ngram ({o['min_ngram']}) must not exceed max_ngram ({o['max_ngram']})")
        self.max_ngram, self.min_ngram, self.max_draft = o["max_ngram"], o["min_ngram"], o["max_draft"]

    def propose(self, rids, budgets):
        out = []
        for rid, budget in zip(rids, budgets):
            ctx = self.context(rid)
            draft = (
                find_continuation(ctx, self.max_ngram, self.min_ngram, min(self.max_draft, int(budget) - 1))
                if budget > 1
                else ctx[:0]
            )
            out.append(DraftTree.chain(int(ctx[-1]), draft))
        return out
