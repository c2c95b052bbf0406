"""A running digest of the draft trees one engine worker proposes, to compare TP ranks.

Every TP rank runs its own drafting session and must propose bit-identical trees (the
engine verifies rank 0's view of the batch on every rank). :class:`TreeDigest` folds each
step's trees (their node counts, tokens and parents, in batch order; not the scores, not
the request ids, which differ between engine runs) into one BLAKE2b state, so two
workers, or two runs of one engine at different TP sizes, that drafted the same trees
end with the same hex digest. :class:`DigestLog` writes one line per step to a file, so a
test reads it from the engine's worker process and finds the first step where two ranks
part. The adapters enable it with ``SPECPLUG_DIGEST_DIR`` (:mod:`specplug.plugins.env`);
unset, nothing is hashed.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from typing import IO, Any

import numpy as np

from .tree import DraftTree

__all__ = ["TreeDigest", "DigestLog", "read_digest_log"]


class TreeDigest:
    """The running hash of every tree :meth:`update` was given (tokens and parents)."""

    def __init__(self) -> None:
        self._h = hashlib.blake2b(digest_size=16)
        self.steps = 0
        self.trees = 0
        self.nodes = 0

    def update(self, trees: Sequence[DraftTree]) -> str:
        """Fold one step's trees in (batch order); returns the running hex digest."""
        sizes = np.fromiter((len(t) for t in trees), np.int32, len(trees))
        h = self._h
        h.update(np.int32(len(trees)).tobytes())
        h.update(sizes.tobytes())
        if len(trees):
            h.update(np.concatenate([t.tokens for t in trees]).astype("<i4", copy=False).tobytes())
            h.update(np.concatenate([t.parents for t in trees]).astype("<i4", copy=False).tobytes())
        self.steps += 1
        self.trees += len(trees)
        self.nodes += int(sizes.sum())
        return self.hexdigest

    @property
    def hexdigest(self) -> str:
        return self._h.hexdigest()


class DigestLog:
    """A :class:`TreeDigest` that appends ``step trees nodes digest`` to ``path`` after
    every step (line-buffered: a worker killed at shutdown has written every step it ran).
    The first line is a JSON header: ``meta`` (engine, rank, algorithm, ...)."""

    def __init__(self, path: str | os.PathLike, meta: Mapping[str, Any]):
        self.digest = TreeDigest()
        self.path = os.fspath(path)
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        self._file: IO[str] = open(self.path, "w", buffering=1, encoding="utf-8")  # noqa: SIM115 -- lives with the worker
        self._file.write(json.dumps(dict(meta), sort_keys=True) + "\n")

    def update(self, trees: Sequence[DraftTree]) -> str:
        d = self.digest
        hexdigest = d.update(trees)
        self._file.write(f"{d.steps} {len(trees)} {sum(len(t) for t in trees)} {hexdigest}\n")
        return hexdigest

    def close(self) -> None:
        self._file.close()


def read_digest_log(path: str | os.PathLike) -> tuple[dict, list[str]]:
    """(header, the running digest after each step) of a :class:`DigestLog` file."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    return json.loads(lines[0]), [ln.split()[3] for ln in lines[1:] if ln.strip()]
