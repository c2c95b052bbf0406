"""Benchmark peers: other engines' own drafters behind specplug's drafter protocol.

They are registered here, by the benchmark side (``specplug bench``, ``bench-drafters``
and ``algorithms`` import this module), never by the core table
(:mod:`specplug.drafters.registry` names no engine module), and engines never register
them (``peer=True``). Importing this module registers them; it imports no engine.
"""

from __future__ import annotations

from typing import Any, ClassVar

from specplug.adapters.sglang.ngram_peer import SGLangNgramDrafter
from specplug.drafters import registry
from specplug.drafters.options import Option, resolve_options

__all__ = ["SGLangNgramPeer"]


class SGLangNgramPeer(SGLangNgramDrafter):
    """SGLang 0.5.23's NGRAM corpus (:mod:`specplug.adapters.sglang.ngram_peer`) with its
    options declared for the registry; defaults are SGLang's server defaults."""

    DEFAULT_BUDGET: ClassVar[int] = 16
    OPTIONS: ClassVar[tuple[Option, ...]] = (
        Option("max_trie_depth", int, 18, "SGLang's --speculative-ngram-max-trie-depth", 2, 64),
        Option("min_bfs_breadth", int, 1, "SGLang's --speculative-ngram-min-bfs-breadth", 1, 64),
        Option("max_bfs_breadth", int, 10, "SGLang's --speculative-ngram-max-bfs-breadth", 1, 64),
        Option("match_type", str, "BFS", "SGLang's --speculative-ngram-match-type", choices=("BFS", "PROB")),
        Option("capacity", int, 10_000_000, "SGLang's --speculative-ngram-capacity", 1024, 1 << 30),
    )

    def __init__(self, vocab_size: int, **options: Any):
        super().__init__(vocab_size, **resolve_options(self.OPTIONS, options, self.name))


registry.register(
    registry.AlgorithmSpec(
        name="sglang-ngram",
        drafter="specplug.peers:SGLangNgramPeer",
        description="benchmark peer: SGLang 0.5.23's own NGRAM corpus (C++ trie, JIT-built) driven standalone",
        peer=True,
    )
)
