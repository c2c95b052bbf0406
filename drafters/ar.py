"""Autoregressive baseline: never speculates (a tree of one node every step)."""
from __future__ import annotations

from .base import ContextDrafter
from .tree import DraftTree


class AutoregressiveDrafter(ContextDrafter):
    name = "ar"

    def propose(self, rids, budgets):
        return [DraftTree.single(int(self.context(rid)[-1])) for rid in rids]
