"""The benchmark peer that drives SGLang's own NGRAM corpus: mask-to-tree conversion, the
real corpus behind the drafter protocol, and that engines never register it."""

import numpy as np
import pytest
from model_free_helpers import simulate

from specplug import peers  # noqa: F401 (the benchmark side registers sglang-ngram, not the core)
from specplug.adapters.sglang.ngram_peer import trees_from_mask
from specplug.drafters import registry
from specplug.drafters.errors import ConfigError


def corpus_available() -> bool:
    try:
        from sglang.srt.speculative.cpp_ngram.ngram_corpus import NgramCorpus

        NgramCorpus(draft_token_num=4)
        return True
    except Exception:
        return False


needs_corpus = pytest.mark.skipif(
    not corpus_available(),
    reason=(
        "SGLang's NGRAM corpus is not importable; pip install --no-deps -r "
        "integration_tests/sglang/requirements-cpu.txt"
    ),
)


def test_mask_to_tree_parents_and_padding():
    # SGLang's output for the query "3 44" in a corpus holding "3 44 55 66": a chain, then
    # padding (token 0 below the last node, repeated)
    ids = np.array([3, 4, 44, 5, 55, 6, 66, 77, 44, 55, 0, 0])
    m1 = np.tril(np.ones((4, 4), int))
    mask = np.zeros((2, 8, 8), int)
    mask[0] = [
        [1, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0, 0],
        [1, 0, 1, 0, 0, 0, 0, 0],
        [1, 1, 0, 1, 0, 0, 0, 0],
        [1, 0, 1, 0, 1, 0, 0, 0],
        [1, 1, 0, 1, 0, 1, 0, 0],
        [1, 0, 1, 0, 1, 0, 1, 0],
        [1, 0, 1, 0, 1, 0, 1, 1],
    ]
    mask[1, :4, :4] = m1
    mask[1, 3] = [1, 1, 0, 1, 0, 0, 0, 0]  # the second 0: sibling of the first
    ids = np.concatenate([ids[:8], ids[8:12], np.zeros(4, int)])
    trees = trees_from_mask(ids, mask.reshape(-1), np.array([8, 4]))
    a, b = trees
    assert a.parents.tolist() == [-1, 0, 0, 1, 2, 3, 4, 6]
    assert a.tokens.tolist() == [3, 4, 44, 5, 55, 6, 66, 77]
    assert b.tokens.tolist() == [44, 55, 0] and b.parents.tolist() == [-1, 0, 1]  # duplicate merged
    a.validate(1000, 8)
    b.validate(1000, 4)


@needs_corpus
def test_drafts_the_corpus_continuation_and_frees_state():
    d = registry.create("sglang-ngram", 1000)
    d.start("r", [9, 1, 2, 3, 4, 5, 6, 7, 8])
    t = d.propose(["r"], [8])[0]
    assert t.tokens[0] == 8  # nothing inserted at prefill, like SGLang
    d.observe("r", t, [1])  # committed "... 8 1": corpus gets the tail
    d.observe("r", d.propose(["r"], [8])[0], [2])
    t = d.propose(["r"], [8])[0].validate(1000, 8)
    assert t.tokens[0] == 2 and 3 in t.tokens[t.parents == 0]  # "1 2" went on with 3
    d.finish("r")
    assert d.active_requests() == 0
    d.start("s", [1, 2])
    assert len(d.propose(["s"], [3])[0]) <= 3  # smaller budgets: a prefix
    with pytest.raises(ConfigError, match="fixed number"):
        d.propose(["s"], [16])


@needs_corpus
def test_trees_valid_in_the_simulated_loop():
    d, mat = simulate("sglang-ngram", budgets=(16,), n_requests=8)
    assert mat > 1.0


def test_peer_is_not_an_engine_algorithm():
    from specplug.adapters.tgi.runtime import ChainSpeculation
    from specplug.plugins import sglang as plug

    assert registry.get("sglang-ngram").peer
    assert "SGLANG_NGRAM" not in plug.engine_names()
    with pytest.raises(ConfigError, match="benchmark peer"):
        ChainSpeculation("sglang-ngram")
