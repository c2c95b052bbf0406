"""The per-worker draft-tree digest (drafters/digest.py) and the SGLang adapter's digest file
(adapters/sglang/config.py: ``SPECPLUG_DIGEST_DIR``), without an engine. The real engine at
``--tp-size 2``: integration_tests/sglang/test_tp.py."""

from __future__ import annotations

import types

from specplug.adapters.sglang.config import digest_log
from specplug.drafters.digest import DigestLog, TreeDigest, read_digest_log
from specplug.drafters.tree import DraftTree
from specplug.plugins import env


def _trees():
    return [
        DraftTree.chain(5, [6, 7], [0.9, 0.5]),
        DraftTree([3, 4, 8], [-1, 0, 0], [1.0, 0.6, 0.3]),
        DraftTree.single(9),
    ]


def _digest(*steps) -> str:
    d = TreeDigest()
    for trees in steps:
        d.update(trees)
    return d.hexdigest


def test_digest_is_of_tokens_and_parents_in_batch_order():
    trees = _trees()
    assert _digest(trees) == _digest(_trees())  # deterministic: a function of the trees alone
    rescored = [DraftTree(t.tokens, t.parents, t.scores * 0.5) for t in trees]
    assert _digest(rescored) == _digest(trees)  # scores are not part of it
    assert _digest(trees[::-1]) != _digest(trees)  # batch order is
    reparented = DraftTree([3, 4, 8], [-1, 0, 1], [1.0, 0.6, 0.3])
    assert _digest([trees[0], reparented, trees[2]]) != _digest(trees)  # parents are
    retoken = DraftTree.chain(5, [6, 8])
    assert _digest([retoken, *trees[1:]]) != _digest(trees)  # tokens are
    # step boundaries count: two steps of one tree each differ from one step of both
    assert _digest(trees[:1], trees[1:2]) != _digest(trees[:2])
    assert _digest([], trees) != _digest(trees)


def test_digest_counts():
    d = TreeDigest()
    d.update(_trees())
    d.update([])
    assert (d.steps, d.trees, d.nodes) == (2, 3, 7)


def test_digest_log_writes_a_line_per_step(tmp_path):
    log = DigestLog(tmp_path / "sub" / "w.digest", {"tp_rank": 1})
    running = [log.update(_trees()), log.update(_trees()[:1])]
    # line-buffered: readable while the worker still holds the file
    header, digests = read_digest_log(tmp_path / "sub" / "w.digest")
    log.close()
    assert header == {"tp_rank": 1}
    assert digests == running == [_digest(_trees()), _digest(_trees(), _trees()[:1])]
    lines = (tmp_path / "sub" / "w.digest").read_text().splitlines()
    assert lines[1].split()[:3] == ["1", "3", "7"]  # step, trees, nodes


def test_sglang_digest_file_per_rank(tmp_path):
    par = types.SimpleNamespace(tp_rank=1, tp_size=2, pp_rank=0, dp_rank=None)
    assert digest_log("RACER", 16, par, environ={}) is None  # unset: nothing hashed
    log = digest_log("RACER", 16, par, environ={env.DIGEST_DIR: str(tmp_path)})
    assert log is not None
    log.update(_trees())
    log.close()
    header, digests = read_digest_log(tmp_path / "sglang-tp1.digest")
    assert header["tp_rank"] == 1 and header["tp_size"] == 2 and header["dp_rank"] == 0
    assert header["algorithm"] == "RACER" and header["width"] == 16 and header["engine"] == "sglang"
    assert digests == [_digest(_trees())]

    class Unset:  # SGLang's ParallelContext raises for a field never written
        tp_rank, tp_size, dp_rank = 0, 4, 2

        @property
        def pp_rank(self):
            raise RuntimeError("not written")

    log = digest_log("PLD", 8, Unset(), environ={env.DIGEST_DIR: str(tmp_path)})
    assert log is not None and log.path.endswith("sglang-dp2-tp0.digest")
    log.close()
