"""RACER: retrieval + logits fusion, tree validity, state bookkeeping, options."""

import numpy as np
import pytest
from model_free_helpers import VOCAB, simulate

from specplug.drafters import registry
from specplug.drafters.errors import ConfigError
from specplug.drafters.feedback import TopK
from specplug.drafters.racer import RacerDrafter


def children(tree, node):
    return {int(tree.tokens[i]): i for i in np.flatnonzero(tree.parents == node)}


def chain_below(tree, tokens):
    """Node index reached by following ``tokens`` from the root, or -1."""
    cur = 0
    for t in tokens:
        cur = children(tree, cur).get(int(t), -1)
        if cur < 0:
            return -1
    return cur


def test_retrieval_drafts_the_continuation_of_a_repeated_phrase():
    d = RacerDrafter(100, logits_depth=0)
    phrase = [10, 11, 12, 13, 14, 15, 16, 17]
    d.start("r", [1, 2] + phrase + [3, 4, 10, 11, 12])
    tree = d.propose(["r"], [64])[0].validate(100, 64)
    assert tree.tokens[0] == 12
    assert chain_below(tree, [13, 14, 15, 16, 17]) > 0  # the whole remembered continuation
    assert children(tree, 0).keys() == {13}  # nothing else followed "... 11 12"
    d.finish("r")


def test_accepted_tokens_extend_retrieval():
    d = RacerDrafter(100, logits_depth=0)
    d.start("r", [5, 6, 7, 8, 9])
    assert len(d.propose(["r"], [16])[0]) == 1  # nothing repeated yet
    d.observe("r", d.propose(["r"], [16])[0], [5, 6])  # context ... 9 5 6: "5 6" seen before
    tree = d.propose(["r"], [16])[0]
    assert tree.tokens[0] == 6 and chain_below(tree, [7, 8, 9, 5, 6]) > 0
    d.finish("r")


def test_logits_tree_from_prefill_and_verification_topk():
    d = RacerDrafter(100, retrieval_share=0.0)
    ctx = [1, 2, 3]
    topk = TopK.of(np.array([[2, 40, 41, 42, 43, 44, 45, 46], [3, 50, 51, 52, 53, 54, 55, 56]]))
    d.start("r", ctx, topk)
    tree = d.propose(["r"], [64])[0]
    assert len(tree) == 1  # no row for the root token 3 yet
    d.observe("r", tree, [7], TopK.of([[7, 60, 61, 62, 63, 64, 65, 66]]))  # row of 3
    tree = d.propose(["r"], [64])[0]  # root 7: still unknown
    assert len(tree) == 1
    d.observe("r", tree, [3], TopK.of([[3, 70, 71, 72, 73, 74, 75, 76]]))  # row of 7; root -> 3
    tree = d.propose(["r"], [9])[0].validate(100, 9)
    assert tree.tokens[0] == 3 and len(tree) == 9
    assert set(children(tree, 0)) < {7, 60, 61, 62, 63, 64, 65, 66}  # best ranks of 3's row
    assert tree.tokens[tree.best_child[0]] == 7  # rank 0 scores highest
    assert chain_below(tree, [7, 3]) > 0  # 3 -> 7 -> 3 (0.25) beats rank 3 of 3
    tree = d.propose(["r"], [64])[0].validate(100, 64)
    assert set(children(tree, 0)) == {7, 60, 61, 62, 63, 64, 65, 66}
    assert chain_below(tree, [7, 3, 7, 3]) > 0  # the breadth decays with depth
    d.finish("r")


def test_pair_rows_are_preferred_over_token_rows():
    """After "2 3" the target predicted 5; after "5 3" it predicted 2 (the token row of 3
    now says 2). Back at "2 3", the pair-keyed row drafts 5; without pair rows, 2."""

    def child_after_walk(pair_rows):
        d = RacerDrafter(100, retrieval_share=0.0, pair_rows=pair_rows)
        d.start("r", [1, 2, 3])
        for nxt, row in ((5, [5, 40]), (3, [3, 41]), (2, [2, 60]), (3, [3, 42])):
            tree = d.propose(["r"], [1])[0]
            d.observe("r", tree, [nxt], TopK.of([row + [-1] * 6]))
        tree = d.propose(["r"], [2])[0]
        d.finish("r")
        assert tree.tokens[0] == 3 and len(tree) == 2
        return int(tree.tokens[1])

    assert child_after_walk(65536) == 5
    assert child_after_walk(0) == 2


def test_fusion_is_a_trie_union_with_distinct_siblings():
    d = RacerDrafter(100)
    ctx = [20, 21, 22, 23, 20, 21]  # retrieval: 21 -> 22 -> 23
    topk = np.zeros((5, 8), np.int64)
    for i in range(5):
        topk[i] = [ctx[i + 1]] + [30 + i * 8 + j for j in range(7)]
    topk[1, 0] = 22  # row of 21: 22 first (same as retrieval)
    d.start("r", ctx, TopK.of(topk))
    tree = d.propose(["r"], [64])[0].validate(100, 64)
    kids = children(tree, 0)
    assert 22 in kids and len(kids) == len(set(kids))
    assert chain_below(tree, [22, 23, 20, 21]) > 0  # retrieved chain kept whole
    assert 5 + 7 <= len(tree) <= 64  # the logits tree added rows' other ranks
    assert 38 in children(tree, 0)  # rank 1 of 21's row, beside retrieved 22
    d.finish("r")


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"global_cache": True},
        {"retrieval_share": 0.0},
        {"logits_depth": 0},
        {"ngram": 3, "min_match": 1},
        {"max_nodes_per_request": 640},
    ],
)
def test_trees_valid_and_state_freed(options):
    d, mat = simulate("racer", options, budgets=(1, 2, 7, 64, 100), n_requests=10)
    assert mat > 1.0
    live = d.pool.live_nodes
    assert live == (d.pool.owner_nodes(d.global_slot) if d.global_cache else 0)


def test_budget_one_and_abandoned_requests():
    d, _ = simulate("racer", {"global_cache": True}, budgets=(1,), n_requests=6, abandon_every=2)
    assert d.active_requests() == 0
    assert d.pool.live_nodes == d.pool.owner_nodes(d.global_slot)


def test_global_cache_carries_outputs_to_new_requests():
    d = RacerDrafter(100, global_cache=True, logits_depth=0)
    out = [40, 41, 42, 43, 44, 45]
    d.start("a", [1, 2])
    tree = d.propose(["a"], [8])[0]
    d.observe("a", tree, out)
    d.finish("a")
    d.start("b", [9, 40, 41])  # b's prompt ends like a's output began
    tree = d.propose(["b"], [8])[0]
    assert chain_below(tree, [42, 43, 44, 45]) > 0
    d.finish("b")
    plain = RacerDrafter(100, logits_depth=0)
    plain.start("b", [9, 40, 41])
    assert len(plain.propose(["b"], [8])[0]) == 1


def test_retrieval_beats_logits_only_on_repetitive_streams():
    _, fused = simulate("racer", {}, n_requests=8, seed=3)
    _, logits_only = simulate("racer", {"retrieval_share": 0.0}, n_requests=8, seed=3)
    assert fused > logits_only


@pytest.mark.parametrize(
    "opts, match",
    [
        ({"ngram": 0}, r"\[1, 64\]"),
        ({"topk": 33}, r"\[1, 32\]"),
        ({"retrieval_share": 1.5}, r"\[0.0, 1.0\]"),
        ({"min_match": 11}, "min_match"),
        ({"max_nodes_per_request": 100}, "64 \\* ngram"),
        ({"global_cache": "yes"}, "true or false"),
        ({"bogus": 1}, "valid options"),
    ],
)
def test_bad_options_rejected(opts, match):
    with pytest.raises(ConfigError, match=match):
        registry.create("racer", VOCAB, opts)


def test_bad_inputs_rejected():
    d = RacerDrafter(100)
    with pytest.raises(ConfigError, match="vocab"):
        d.start("r", [1, 200])
    with pytest.raises(ConfigError, match="at least one token"):
        d.start("r", [])
    with pytest.raises(ConfigError, match="call start"):
        d.propose(["nope"], [8])
    d.start("r", [1, 2])
    with pytest.raises(ConfigError, match="budget"):
        d.propose(["r"], [0])
    with pytest.raises(ConfigError, match="vocabulary"):
        d.observe("r", d.propose(["r"], [4])[0], [500])
    d.finish("r")
    d.finish("r")  # finishing twice is harmless
    assert d.active_requests() == 0


def test_registry_entry():
    spec = registry.get("racer")
    assert spec.uses_target_topk and spec.default_budget == 64 and RacerDrafter.uses_target_topk
    assert isinstance(registry.create("RACER", VOCAB), RacerDrafter)


def test_dynamic_trees_value_retrieved_edges_by_match_length():
    """Dynamic RACER calibrates a retrieved edge per (matched length class, frequency-ratio
    bin): a 6-token match and a 1-token match at similar ratios get their own estimates,
    and observe scores each drafted edge in its own cell."""
    from specplug.drafters.tree_build import RETRIEVAL_CLASSES, match_class

    assert [match_class(d, RETRIEVAL_CLASSES) for d in (1, 2, 3, 4, 5, 6, 10)] == [0, 0, 1, 2, 2, 3, 3]
    d = RacerDrafter(100, tree="dynamic", logits_depth=0, pair_rows=0)
    rc = d.acceptance
    rc.trials[0, :RETRIEVAL_CLASSES] = 1000.0  # regime 0: greedy
    rc.hits[0, 0] = 50.0  # 1-token matches: rarely accepted
    rc.hits[0, 3] = 900.0  # >= 6 tokens matched: mostly accepted
    table = d.edge_table()
    # "1..6" occurred before, followed by 7 50; "6" alone was also followed by 60
    d.start("r", [1, 2, 3, 4, 5, 6, 7, 50, 6, 60, 9, 1, 2, 3, 4, 5, 6])
    [tree] = d.propose(["r"], [8])
    seven, sixty = chain_below(tree, [7]), chain_below(tree, [60])
    assert seven > 0 and sixty > 0
    # 7 below the 6-token border (automaton depth 7, ratio 1 / (1 + 1)), 60 below the
    # 1-token border (depth 2, ratio 1 / (2 + 1))
    assert tree.node_data[seven] == 3 * 16 + 5 and tree.node_data[sixty] == 0 * 16 + 3
    assert tree.scores[seven] == pytest.approx(table[3, 5], rel=1e-6)
    assert tree.scores[sixty] == pytest.approx(table[0, 3], rel=1e-6)
    fifty = chain_below(tree, [7, 50])  # continuation: depth 8, ratio 1
    assert fifty > 0 and tree.scores[fifty] == pytest.approx(table[3, 5] * table[3, 9], rel=1e-6)
    before_t, before_h = rc.trials.copy(), rc.hits.copy()
    d.observe("r", tree, [7, 50, 6])
    dt, dh = rc.trials[0] - before_t[0], rc.hits[0] - before_h[0]
    assert (rc.trials[1:] == 0).all()  # greedy evidence stays in the greedy table
    assert dt[3, 5] == 1 and dh[3, 5] == 1  # 7 accepted
    # 50 accepted after it; then 6 (ratio 1 too) was tried, but 6 is the bonus token here
    assert dt[3, 9] == 2 and dh[3, 9] == 1
    assert dt[0, 3] == 1 and dh[0, 3] == 0  # 60 drafted from the root, rejected
    d.finish("r")


def _static_trees_digest(opts, steps=25, batch=6, vocab=1500, budget=40):
    """sha256 of every static tree (tokens, parents, scores) of a fixed synthetic run."""
    import hashlib

    from specplug.bench_drafters import SyntheticWorkload, verify_batch

    w = SyntheticWorkload(vocab, seed=0, n_snippets=150)
    d = RacerDrafter(vocab, tree="static", **opts)
    streams = np.stack([w.stream(400) for _ in range(batch)])
    pos = np.full(batch, 120)
    rids = list(range(batch))
    for i in rids:
        d.start(i, streams[i, :121], TopK.of(w.alternatives(streams[i, :120])))
    h = hashlib.sha256()
    for _ in range(steps):
        trees = d.propose(rids, [budget] * batch)
        for t in trees:
            for a in (
                np.asarray(t.tokens, np.int64),
                np.asarray(t.parents, np.int64),
                np.asarray(t.scores, np.float64),
            ):
                h.update(a.tobytes())
        feedback, n = verify_batch(rids, trees, streams, pos, w)
        d.observe_batch(feedback)
        pos += n + 1
    return h.hexdigest()[:16]


@pytest.mark.parametrize(
    "opts, digest", [({}, "b4eb3b031d039983"), ({"pair_rows": 0, "fusion": "retrieval-first"}, "0d87110ce0393b2b")]
)
def test_static_trees_are_unchanged_bit_for_bit(opts, digest):
    """Static RACER is the paper's fixed-value tree: its trees must not drift when the
    dynamic mode changes. A score computed in another float order (w * (f / n) instead of
    w * f / n) once flipped retrieval-vs-logits ties and moved HumanEval MAT by 3%. The
    digests were taken from commit 8cf1ab6; update them only for an intended change of
    static trees (and say so in the change)."""
    assert _static_trees_digest(opts) == digest
