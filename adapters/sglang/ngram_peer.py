"""SGLang's own NGRAM drafter, driven standalone: an external peer for ``specplug bench``.

SGLang 0.5.23's NGRAM speculative worker keeps one corpus (a C++ trie plus per-request
match state, ``sglang.srt.speculative.cpp_ngram.ngram_corpus.NgramCorpus``, JIT-compiled
by SGLang on first use; it builds on a CPU). This class calls that corpus exactly as
``ngram_worker.py`` does, so the embedded engine can verify its drafts side by side
with specplug's algorithms on the same prompts and budget:

* propose: ``batch_get`` with the last ``max_trie_depth`` committed tokens (prompt
  included) and the total length; SGLang returns ``draft_token_num`` ids (the first
  is the root) and a [n, n] ancestor mask, which become a :class:`DraftTree`;
* observe: ``batch_put`` of the last ``max_trie_depth`` committed tokens, after the
  accepted ones were appended (SGLang does not insert the prompt at prefill either);
* finish: ``erase_match_state``.

Defaults are SGLang 0.5.23 server defaults. SGLang fixes ``draft_token_num`` per corpus, so one drafter serves the first budget it
sees; smaller budgets (e.g. near ``max_new_tokens``) keep the BFS-ordered prefix. It is a benchmark peer only: engines do not register it (SGLang has NGRAM).
"""

from __future__ import annotations

import numpy as np

from specplug.drafters.automaton_drafter import as_token_array, check_budgets
from specplug.drafters.base import Drafter
from specplug.drafters.errors import ConfigError
from specplug.drafters.tree import DraftTree

__all__ = ["SGLangNgramDrafter", "trees_from_mask"]


def _load_corpus_class():
    try:
        from sglang.srt.speculative.cpp_ngram.ngram_corpus import NgramCorpus
    except Exception as e:  # not installed, or the kernel cannot build here
        raise ConfigError(
            "algorithm 'sglang-ngram' drives SGLang's own NGRAM corpus and needs sglang 0.5.23 "
            "importable (pip install --no-deps sglang==0.5.23 plus "
            f"integration_tests/sglang/requirements-cpu.txt): {type(e).__name__}: {e}"
        ) from None
    return NgramCorpus


def trees_from_mask(ids: np.ndarray, mask: np.ndarray, sizes: np.ndarray) -> list[DraftTree]:
    """SGLang's flattened drafts ([B * n] ids, [B * n * n] ancestor mask) as draft trees.

    A node's parent is its deepest strict ancestor (the last 1 left of the diagonal).
    SGLang pads short drafts; a node that repeats a sibling's token is merged into that
    sibling (its subtree re-attached), so siblings stay distinct. ``sizes[b]`` caps tree b.
    """
    b = sizes.shape[0]
    n = ids.shape[0] // max(b, 1)
    ids = ids.reshape(b, n).astype(np.int32)
    strict = np.tril(mask.reshape(b, n, n).astype(bool), -1)
    has = strict.any(axis=2)
    parents = np.where(has, n - 1 - np.argmax(strict[:, :, ::-1], axis=2), -1).astype(np.int32)
    parents[:, 0] = -1
    out = []
    for i in range(b):
        tok, par = ids[i, : sizes[i]], parents[i, : sizes[i]]
        keys = par.astype(np.int64) * (1 << 32) + tok
        if np.unique(keys).shape[0] == keys.shape[0] and (par[1:] >= 0).all():
            out.append(DraftTree(tok, par))
            continue
        out.append(_merge_duplicates(tok, par))
    return out


def _merge_duplicates(tok: np.ndarray, par: np.ndarray) -> DraftTree:
    """Rare path (padding): rebuild the trie, aliasing repeated (parent, token) nodes."""
    alias = np.full(tok.shape[0], -1, np.int64)
    seen: dict = {}
    keep_tok, keep_par = [int(tok[0])], [-1]
    alias[0] = 0
    for j in range(1, tok.shape[0]):
        p = int(par[j])
        if p < 0 or alias[p] < 0:
            continue  # orphan: dropped with its subtree
        key = (int(alias[p]), int(tok[j]))
        if key not in seen:
            seen[key] = len(keep_tok)
            keep_tok.append(key[1])
            keep_par.append(key[0])
        alias[j] = seen[key]
    return DraftTree(np.array(keep_tok, np.int32), np.array(keep_par, np.int32))


class SGLangNgramDrafter(Drafter):
    name = "sglang-ngram"

    def __init__(
        self,
        vocab_size,
        max_trie_depth=18,
        min_bfs_breadth=1,
        max_bfs_breadth=10,
        match_type="BFS",
        capacity=10_000_000,
    ):
        super().__init__(vocab_size)
        self._corpus_class = _load_corpus_class()
        self._kwargs = dict(
            max_trie_depth=int(max_trie_depth),
            min_bfs_breadth=int(min_bfs_breadth),
            max_bfs_breadth=int(max_bfs_breadth),
            match_type=str(match_type),
            capacity=int(capacity),
        )
        self.depth = int(max_trie_depth)
        self.corpus = None
        self.draft_tokens: int | None = None
        self._tail: dict = {}  # rid -> last max_trie_depth committed tokens
        self._total: dict = {}  # rid -> committed length

    def _corpus_for(self, width: int):
        if self.corpus is None:
            self.draft_tokens = width
            self.corpus = self._corpus_class(draft_token_num=width, **self._kwargs)
        elif width > self.draft_tokens:
            raise ConfigError(
                f"sglang-ngram drafts a fixed number of tokens per corpus "
                f"({self.draft_tokens}, the first budget it saw); got budget {width}. "
                f"Use one --budget per drafter."
            )
        return self.corpus

    def start(self, rid, context_ids, context_topk=None):
        ids = as_token_array(context_ids, self.vocab_size, "context_ids")
        if ids.shape[0] == 0:
            raise ConfigError("context_ids must hold at least one token (the root of the next tree)")
        self._tail[rid] = ids[-self.depth :].tolist()
        self._total[rid] = int(ids.shape[0])

    def propose(self, rids, budgets):
        b = check_budgets(budgets, len(rids))
        for rid in rids:
            if rid not in self._tail:
                raise ConfigError(f"request {rid!r} was not started (call start first)")
        trees: list = [None] * len(rids)
        spec = [i for i in range(len(rids)) if b[i] > 1]
        for i in range(len(rids)):
            if b[i] <= 1:
                trees[i] = DraftTree.single(self._tail[rids[i]][-1])
        if spec:
            width = int(b[spec].max())
            corpus = self._corpus_for(width)
            corpus.synchronize()
            ids, mask = corpus.batch_get(
                [str(rids[i]) for i in spec], [self._tail[rids[i]] for i in spec], [self._total[rids[i]] for i in spec]
            )
            made = trees_from_mask(np.asarray(ids), np.asarray(mask), b[spec])
            for i, t in zip(spec, made):
                trees[i] = t
        return trees

    def observe(self, rid, tree, accepted, target_topk=None):
        acc = as_token_array(accepted, self.vocab_size, "accepted")
        tail = (self._tail[rid] + acc.tolist())[-self.depth :]
        self._tail[rid] = tail
        self._total[rid] += int(acc.shape[0])
        if self.corpus is not None:
            self.corpus.batch_put([tail])

    def finish(self, rid):
        if self._tail.pop(rid, None) is not None and self.corpus is not None:
            self.corpus.erase_match_state([str(rid)])
        self._total.pop(rid, None)

    def active_requests(self) -> int:
        return len(self._tail)
