"""Autoregressive baseline: never speculates (a tree of one node every step)."""

from __future__ import annotations

from typing import Any, ClassVar

from .base import ContextDrafter
from .options import Option, resolve_options
from .tree import DraftTree


class AutoregressiveDrafter(ContextDrafter):
    name = "ar"
    OPTIONS: ClassVar[tuple[Option, ...]] = ()
    DEFAULT_BUDGET: ClassVar[int] = 1

    def __init__(self, vocab_size: int, **options: Any):
        super().__init__(vocab_size, **resolve_options(self.OPTIONS, options, self.name))

    def propose(self, rids, budgets):
        return [DraftTree.single(int(self.context(rid)[-1])) for rid in rids]
