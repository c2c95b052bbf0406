"""Verifiers: greedy against a brute-force walk; sampling checked exactly (every random
outcome enumerated on tiny vocabularies) and statistically (chi-square), with negative
controls that must be detected; logit warping against a naive reference."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from specplug.drafters import verify as V
from specplug.drafters.errors import ConfigError
from specplug.drafters.sampling import check_sampling, warp_logits
from specplug.drafters.tree import DraftTree, pack_trees

torch.set_num_threads(1)
SETTINGS = settings(max_examples=60, deadline=None)


@st.composite
def trees(draw, max_nodes=10, vocab=5):
    n = draw(st.integers(1, max_nodes))
    parents = [-1] + [draw(st.integers(0, i - 1)) for i in range(1, n)]
    used, tokens = set(), []
    for i in range(n):
        t = draw(st.integers(0, vocab - 1))
        while (parents[i], t) in used:
            t += 1
        used.add((parents[i], t))
        tokens.append(t)
    return DraftTree(np.array(tokens), np.array(parents))


def pack(tree_list, extra=0):
    return pack_trees(tree_list, width=max(len(t) for t in tree_list) + extra)


# ====================================================================== greedy
def greedy_walk(tree, argmax):
    cur, path = 0, [0]
    while True:
        nxt = [j for j in range(len(tree)) if tree.parents[j] == cur and tree.tokens[j] == argmax[cur]]
        if not nxt:
            return path, int(argmax[cur])
        cur = nxt[0]
        path.append(cur)


@SETTINGS
@given(st.lists(trees(), min_size=1, max_size=5), st.integers(0, 3), st.integers(0, 2**32 - 1))
def test_greedy_matches_brute_force(tree_list, extra, seed):
    rng = np.random.default_rng(seed)
    pk = pack(tree_list, extra)
    b, w = pk.tokens.shape
    # argmax table biased towards a child's token so that long paths get accepted
    table = rng.integers(0, 7, size=(b, w))
    for i, t in enumerate(tree_list):
        for j in range(len(t)):
            kids = np.flatnonzero(t.parents == j)
            if len(kids) and rng.random() < 0.7:
                table[i, j] = t.tokens[rng.choice(kids)]
    res = V.verify_greedy(pk.tokens, pk.parents, pk.depth, pk.valid, table)
    assert res.accept_len.dtype == np.int32 and res.bonus.dtype == np.int64
    for i, t in enumerate(tree_list):
        path, bonus = greedy_walk(t, table[i])
        assert res.accept_len[i] == len(path) - 1
        row = res.accepted_nodes[i]
        assert row[: len(path)].tolist() == path and np.all(row[len(path) :] == -1)
        assert res.bonus[i] == bonus
        assert res.committed(pk.tokens, i) == [int(t.tokens[j]) for j in path[1:]] + [bonus]


def test_greedy_never_accepts_padding():
    # padding repeats the root token; an argmax equal to it must not match padding
    pk = pack([DraftTree.chain(3, [4]), DraftTree.single(3)], extra=2)
    table = np.full(pk.tokens.shape, 3)
    res = V.verify_greedy(pk.tokens, pk.parents, pk.depth, pk.valid, table)
    assert res.accept_len.tolist() == [0, 0] and res.bonus.tolist() == [3, 3]
    # a node marked invalid is never accepted, even where it hangs off a real node
    tokens, parents = np.array([[0, 1, 2]]), np.array([[-1, 0, 0]])
    res = V.verify_greedy(
        tokens, parents, np.array([[0, 1, 1]]), np.array([[True, True, False]]), np.array([[2, 5, 5]])
    )
    assert res.accept_len.tolist() == [0] and res.bonus.tolist() == [2]


@SETTINGS
@given(st.lists(trees(), min_size=1, max_size=4), st.integers(0, 3))
def test_packed_links_match_tree_links(tree_list, extra):
    pk = pack(tree_list, extra)
    fc, ns = V.packed_links(pk.parents, pk.valid)
    for i, t in enumerate(tree_list):
        n = len(t)
        assert np.array_equal(fc[i, :n], t.first_child) and np.array_equal(ns[i, :n], t.next_sibling)
        assert np.all(fc[i, n:] == -1) and np.all(ns[i, n:] == -1)


# ====================================================================== exact enumeration
def enumerate_outcomes(fn):
    """Exact distribution of ``fn(choose)``'s result over every sequence of random choices.

    ``choose(options)`` takes [(value, probability), ...] and returns one value; each run
    replays a prefix of choices and queues the alternatives of every new choice point.
    """
    results: dict = defaultdict(float)
    stack, total = [()], 0.0
    while stack:
        prefix = stack.pop()
        taken: list[int] = []
        weight = [1.0]

        def choose(options):
            opts = [(v, float(p)) for v, p in options if float(p) > 0]
            if len(taken) < len(prefix):
                j = prefix[len(taken)]
            else:
                j = 0
                stack.extend(tuple(taken) + (k,) for k in range(1, len(opts)))
            taken.append(j)
            weight[0] *= opts[j][1]
            return opts[j][0]

        out = fn(choose)
        results[out] += weight[0]
        total += weight[0]
    assert total == pytest.approx(1.0, abs=1e-9)
    return dict(results)


def scripted(choose):
    """coin / sample callables for the verifier core that route every draw through choose."""

    def coin(p):
        return torch.tensor([choose([(True, x), (False, 1.0 - x)]) for x in p.tolist()], dtype=torch.bool)

    def sample(r):  # like torch.multinomial, rows are weights (normalised here)
        return torch.tensor([choose(list(enumerate(np.divide(row, sum(row))))) for row in r.tolist()], dtype=torch.long)

    return coin, sample


def draw_without_replacement(choose, q, k):
    q, out = np.array(q, float), []
    for _ in range(k):
        t = choose(list(enumerate(q / q.sum())))
        out.append(t)
        q[t] = 0.0
    return out


def markov(rng, v, zeros=0):
    """A random row-stochastic matrix; ``zeros`` entries per row set to exactly 0."""
    m = rng.dirichlet(np.ones(v), size=v)
    for row in m:
        row[rng.choice(v, zeros, replace=False)] = 0.0
        row /= row.sum()
    return m


# A tree template: parents of nodes 1.. (children of a node in ascending index).
TEMPLATE_DET = [0, 0, 0, 1, 1, 2]  # root: 3 children; node 1: 2; node 2: 1
TEMPLATE_Q = [0, 0, 1]  # root: 2 children; node 1: 1


def det_tree(root, m_draft, template):
    """Deterministic drafts: children of a node are the top tokens of m_draft[node token]."""
    tokens, parents = [root], [-1]
    for p in template:
        rank = sum(1 for q in parents[1:] if q == p)
        tokens.append(int(np.argsort(-m_draft[tokens[p]], kind="stable")[rank]))
        parents.append(p)
    return DraftTree(np.array(tokens), np.array(parents))


def q_tree(choose, root, q_mat, template):
    """Drafts sampled from q[node token] without replacement, siblings in node order."""
    tokens, parents = [root], [-1]
    for p in sorted(set(template)):
        kids = [i + 1 for i, q in enumerate(template) if q == p]
        assert kids == list(range(len(tokens), len(tokens) + len(kids)))  # BFS template
        tokens += draw_without_replacement(choose, q_mat[tokens[p]], len(kids))
        parents += [p] * len(kids)
    return DraftTree(np.array(tokens), np.array(parents))


def one_step(choose, tree_list, target, draft=None, extra=1):
    """Verify a batch of trees under a Markov target (row = target[node token])."""
    pk = pack(tree_list, extra)
    tp = torch.tensor(target[pk.tokens])
    dp = None if draft is None else torch.tensor(draft[pk.tokens])
    coin, sample = scripted(choose)
    res = V._verify_sampling_core(pk.tokens, pk.parents, pk.depth, pk.valid, tp, dp, coin, sample)
    return [tuple(res.committed(pk.tokens, i)) for i in range(len(tree_list))]


def marginals(dist, v, k):
    out = np.zeros((v,) * k)
    for seq, p in dist.items():
        out[seq[:k]] += p
    return out


def first_two(step_dist, v, target):
    """Distribution of the first two committed tokens: one step, then (where the step
    committed only the bonus) the first token of the next step from its root, which is
    independent of the past under a Markov target; that first-token law is itself checked
    exactly, so combining the two is exact."""
    out = np.zeros((v, v))
    for seq, p in step_dist.items():
        if len(seq) >= 2:
            out[seq[0], seq[1]] += p
        else:
            out[seq[0]] += p * target[seq[0]]
    return out


@pytest.mark.parametrize("seed,zeros", [(0, 0), (1, 1), (2, 2)])
def test_sampling_exact_deterministic_drafts(seed, zeros):
    rng = np.random.default_rng(seed)
    v = 4
    target, drafter = markov(rng, v, zeros), markov(rng, v)
    for root in range(v):
        tree = det_tree(root, drafter, TEMPLATE_DET)
        dist = enumerate_outcomes(lambda ch: one_step(ch, [tree], target)[0])
        np.testing.assert_allclose(marginals(dist, v, 1), target[root], atol=1e-12)
        joint = first_two(dist, v, target)
        np.testing.assert_allclose(joint, target[root][:, None] * target, atol=1e-12)


@pytest.mark.parametrize("seed,zeros", [(3, 0), (4, 1)])
def test_sampling_exact_sampled_drafts(seed, zeros):
    rng = np.random.default_rng(seed)
    v = 3
    target = markov(rng, v, zeros)
    q = markov(rng, v, 1 if zeros == 0 else 0)  # q with and without zeros, support >= 2
    for root in range(v):

        def run(ch):
            tree = q_tree(ch, root, q, TEMPLATE_Q)
            return one_step(ch, [tree], target, q)[0]

        dist = enumerate_outcomes(run)
        np.testing.assert_allclose(marginals(dist, v, 1), target[root], atol=1e-12)
        np.testing.assert_allclose(first_two(dist, v, target), target[root][:, None] * target, atol=1e-12)


def test_sampling_exact_batch_with_padding_is_independent():
    rng = np.random.default_rng(5)
    v = 3
    target, drafter = markov(rng, v, 1), markov(rng, v)
    trees_ = [det_tree(0, drafter, [0, 0, 1]), DraftTree.single(2), det_tree(1, drafter, [0, 1])]
    dist = enumerate_outcomes(lambda ch: tuple(s[0] for s in one_step(ch, trees_, target, extra=2)))
    joint = marginals(dist, v, 3)
    expect = np.einsum("i,j,k->ijk", target[0], target[2], target[1])
    np.testing.assert_allclose(joint, expect, atol=1e-12)


def test_exact_check_detects_specinfer_with_replacement_rule(monkeypatch):
    """Negative control: SpecInfer's rule with the same q for every sibling is lossy for
    distinct (without-replacement) siblings; the exact check must see it."""
    monkeypatch.setattr(V, "_drop_drafted", lambda q, rows, tok: q)
    rng = np.random.default_rng(3)
    target, q = markov(rng, 3), markov(rng, 3, 1)
    worst = 0.0
    for root in range(3):
        dist = enumerate_outcomes(lambda ch: one_step(ch, [q_tree(ch, root, q, TEMPLATE_Q)], target, q)[0])
        worst = max(worst, np.abs(marginals(dist, 3, 1) - target[root]).max())
    assert worst > 1e-3


def test_exact_check_detects_missing_renormalisation(monkeypatch):
    monkeypatch.setattr(V, "_renorm", lambda r, fallback: torch.where(r.sum(-1, keepdim=True) > 0, r, fallback))
    rng = np.random.default_rng(0)
    target, drafter = markov(rng, 4), markov(rng, 4)
    dist = enumerate_outcomes(lambda ch: one_step(ch, [det_tree(0, drafter, TEMPLATE_DET)], target)[0])
    assert np.abs(marginals(dist, 4, 1) - target[0]).max() > 1e-3


# ====================================================================== edge cases
def test_padding_and_invalid_nodes_never_accepted():
    # node 2 hangs off the root but is marked invalid; the target puts all mass on it
    tokens = np.array([[0, 1, 2, 0]])
    parents = np.array([[-1, 0, 0, -1]])
    depth = np.array([[0, 1, 1, 0]])
    valid = np.array([[True, True, False, False]])
    tp = torch.zeros(1, 4, 3, dtype=torch.float64)
    tp[0, :, 2] = 1.0
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        res = V.verify_sampling(tokens, parents, depth, valid, tp, g)
        assert res.accept_len[0] == 0 and res.bonus[0] == 2
    # padding repeats the root token: a target certain of it still does not accept padding
    pk = pack([DraftTree.chain(1, [2])], extra=2)
    tp = torch.zeros(1, 4, 3, dtype=torch.float64)
    tp[0, :, 1] = 1.0
    res = V.verify_sampling(pk.tokens, pk.parents, pk.depth, pk.valid, tp, g)
    assert res.accept_len[0] == 0 and res.bonus[0] == 1


def test_certain_target_always_accepts():
    tree = DraftTree.chain(0, [1, 2, 0])
    pk = pack([tree] * 50)
    probs = np.zeros((3, 3))
    probs[0, 1] = probs[1, 2] = probs[2, 0] = 1.0  # the draft is the only possible text
    res = V.verify_sampling(
        pk.tokens,
        pk.parents,
        pk.depth,
        pk.valid,
        torch.tensor(probs[pk.tokens], dtype=torch.float32),
        torch.Generator().manual_seed(1),
    )
    assert res.accept_len.tolist() == [3] * 50 and res.bonus.tolist() == [1] * 50


@pytest.mark.parametrize("sampled", [False, True])
def test_zero_mass_residual_falls_back(sampled):
    """A rejection of (numerical) probability 0 must not leave an all-zero residual."""
    tree = DraftTree([0, 1, 2], [-1, 0, 0])
    pk = pack([tree])
    tp = torch.zeros(1, 3, 3, dtype=torch.float64)
    tp[0, :, 1] = 1.0  # the target is certain of token 1
    dp = tp.clone() if sampled else None  # q == R: nothing left after rejection
    seen = []

    def coin(p):  # force every rejection
        seen.append(p.tolist())
        return torch.zeros(p.shape, dtype=torch.bool)

    def sample(r):
        assert torch.isfinite(r).all() and (r.sum(-1) > 0.5).all()
        return r.argmax(-1)

    res = V._verify_sampling_core(pk.tokens, pk.parents, pk.depth, pk.valid, tp, dp, coin, sample)
    assert res.accept_len[0] == 0 and res.bonus[0] == 1
    assert seen[0] == [1.0] and seen[1] == [0.0]  # child 2 has no mass under R


def test_empty_batch_and_shape_errors():
    e = np.zeros((0, 3), np.int32)
    res = V.verify_sampling(e, e, e, e.astype(bool), torch.zeros(0, 3, 4))
    assert res.accept_len.shape == (0,) and res.bonus.shape == (0,)
    pk = pack([DraftTree.chain(0, [1])])
    with pytest.raises(ValueError, match="target_probs"):
        V.verify_sampling(pk.tokens, pk.parents, pk.depth, pk.valid, torch.ones(1, 3, 4) / 4)
    with pytest.raises(ValueError, match="draft_probs"):
        V.verify_sampling(
            pk.tokens, pk.parents, pk.depth, pk.valid, torch.ones(1, 2, 4) / 4, draft_probs=torch.ones(1, 2, 3) / 3
        )


def test_generator_makes_runs_reproducible():
    rng = np.random.default_rng(9)
    target = markov(rng, 4)
    pk = pack([det_tree(r % 4, markov(rng, 4), TEMPLATE_DET) for r in range(64)])
    tp = torch.tensor(target[pk.tokens])
    a = V.verify_sampling(pk.tokens, pk.parents, pk.depth, pk.valid, tp, torch.Generator().manual_seed(3))
    b = V.verify_sampling(pk.tokens, pk.parents, pk.depth, pk.valid, tp, torch.Generator().manual_seed(3))
    assert np.array_equal(a.accepted_nodes, b.accepted_nodes) and np.array_equal(a.bonus, b.bonus)


# ====================================================================== chi-square
N_DRAWS = 20000
TWO_LEVEL = np.array([-1, 0, 0, 1, 1, 2])  # root: 2 children, each with 2 (1) children


def batch_trees(roots, target_v, gen, q=None):
    """Vectorised trees of the TWO_LEVEL shape for many roots: children of a node with
    token a are (a+1, a+2) mod V (deterministic), or drawn from q[a] without replacement
    by Gumbel top-k (sampled)."""
    b, w = roots.shape[0], TWO_LEVEL.shape[0]
    tokens = np.empty((b, w), np.int64)
    tokens[:, 0] = roots
    for p in range(w):
        kids = np.flatnonzero(TWO_LEVEL == p)
        if not len(kids):
            continue
        if q is None:
            tokens[:, kids] = (tokens[:, [p]] + 1 + np.arange(len(kids))) % target_v
        else:
            logq = np.log(q[tokens[:, p]])
            gumbel = -np.log(-np.log(gen.random(logq.shape)))
            tokens[:, kids] = np.argsort(-(logq + gumbel), axis=1)[:, : len(kids)]
    parents = np.broadcast_to(TWO_LEVEL, (b, w)).copy()
    depth = np.broadcast_to(DraftTree(tokens[0], TWO_LEVEL).depth, (b, w)).copy()
    return tokens, parents, depth, np.ones((b, w), bool)


def draw_first_two(target, q, seed, root=0):
    """Committed (first, second) tokens of N_DRAWS independent requests, two steps."""
    gen = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    v = target.shape[0]
    roots = np.full(N_DRAWS, root)
    out = np.full((N_DRAWS, 2), -1)
    filled = np.zeros(N_DRAWS, int)
    need = np.arange(N_DRAWS)
    for _ in range(2):
        tok, par, dep, val = batch_trees(roots[need], v, gen, q)
        res = V.verify_sampling(
            tok, par, dep, val, torch.tensor(target[tok]), g, None if q is None else torch.tensor(q[tok])
        )
        rows = np.arange(len(need))
        d = res.accepted_nodes.shape[1] - 1
        committed = np.full((len(need), d + 1), -1)
        for k in range(d):  # accepted tokens below the root, then the bonus
            acc = k < res.accept_len
            committed[acc, k] = tok[rows[acc], res.accepted_nodes[acc, k + 1]]
        committed[rows, res.accept_len] = res.bonus
        for k in range(d + 1):
            put = (committed[:, k] >= 0) & (filled[need] < 2)
            out[need[put], filled[need[put]]] = committed[put, k]
            filled[need[put]] += 1
        roots[need] = res.bonus
        need = np.flatnonzero(filled < 2)
        if not len(need):
            break
    assert (filled == 2).all()
    return out


def chi2_pvalue(pairs, target, root=0):
    v = target.shape[0]
    counts = np.bincount(pairs[:, 0] * v + pairs[:, 1], minlength=v * v)
    expect = (target[root][:, None] * target).ravel() * len(pairs)
    keep = expect > 0
    assert counts[~keep].sum() == 0
    return chisquare(counts[keep], expect[keep]).pvalue


TARGET = np.array(
    [[0.50, 0.30, 0.15, 0.05], [0.10, 0.20, 0.30, 0.40], [0.25, 0.25, 0.25, 0.25], [0.05, 0.05, 0.60, 0.30]]
)
DRAFT_Q = np.array(
    [[0.40, 0.40, 0.10, 0.10], [0.70, 0.10, 0.10, 0.10], [0.10, 0.20, 0.30, 0.40], [0.25, 0.25, 0.25, 0.25]]
)


@pytest.mark.parametrize("q", [None, DRAFT_Q], ids=["deterministic", "sampled"])
def test_chi_square_first_two_tokens(q):
    assert chi2_pvalue(draw_first_two(TARGET, q, seed=1234), TARGET) > 1e-3


#: logits of a 6-token vocabulary; under temperature 0.8, top-k 5 and top-p 0.9 every row
#: loses one to three tokens, so drafts and residuals meet zero-mass tokens
WARP_LOGITS = np.array(
    [
        [2.0, 1.5, 1.0, 0.2, -0.5, -1.0],
        [-1.0, 0.5, 1.0, 1.2, 0.0, -2.0],
        [0.3, 0.3, 0.2, 0.1, 0.0, -0.1],
        [3.0, -1.0, 0.5, 1.0, 0.0, 0.0],
        [0.0, 0.0, 2.0, 2.0, -1.0, 1.0],
        [1.0, 2.0, -3.0, 0.5, 1.5, 0.0],
    ]
)
WARP_Q = np.full((6, 6), 1.0 / 6)  # sampled drafts put mass on tokens the target removed


@pytest.mark.parametrize("q", [None, WARP_Q, "skewed"], ids=["deterministic", "sampled-uniform", "sampled-skewed"])
def test_chi_square_under_temperature_top_k_top_p(q):
    target = warp_logits(torch.tensor(WARP_LOGITS), 0.8, top_k=5, top_p=0.9).double().numpy()
    assert (target == 0).sum(1).min() >= 1  # the warp removed tokens from every row
    if isinstance(q, str):  # drafts from a distribution unlike the target's
        q = np.roll(np.exp(WARP_LOGITS) / np.exp(WARP_LOGITS).sum(1, keepdims=True), 2, axis=1)
    assert N_DRAWS >= 10_000
    assert chi2_pvalue(draw_first_two(target, q, seed=99), target) > 0.01


def test_chi_square_under_warp_detects_a_broken_residual(monkeypatch):
    monkeypatch.setattr(V, "_drop_drafted", lambda q, rows, tok: q)
    target = warp_logits(torch.tensor(WARP_LOGITS), 0.8, top_k=5, top_p=0.9).double().numpy()
    skewed = np.roll(np.exp(WARP_LOGITS) / np.exp(WARP_LOGITS).sum(1, keepdims=True), 2, axis=1)
    assert chi2_pvalue(draw_first_two(target, skewed, seed=99), target) < 1e-3  # the pass bar is 0.01


def test_chi_square_detects_missing_renormalisation(monkeypatch):
    monkeypatch.setattr(V, "_renorm", lambda r, fallback: torch.where(r.sum(-1, keepdim=True) > 0, r, fallback))
    assert chi2_pvalue(draw_first_two(TARGET, None, seed=1234), TARGET) < 1e-6


def test_chi_square_detects_specinfer_with_replacement_rule(monkeypatch):
    monkeypatch.setattr(V, "_drop_drafted", lambda q, rows, tok: q)
    assert chi2_pvalue(draw_first_two(TARGET, DRAFT_Q, seed=1234), TARGET) < 1e-6


# ====================================================================== logit warping
def naive_warp(logits, temperature, top_k, top_p):
    out = []
    for row in np.asarray(logits, np.float64).reshape(-1, logits.shape[-1]):
        x = row / temperature
        if 0 < top_k < len(x):
            x = np.where(x >= np.sort(x)[::-1][top_k - 1], x, -np.inf)
        p = np.exp(x - x.max())
        p /= p.sum()
        if top_p < 1:
            order, keep, mass = np.argsort(-p, kind="stable"), [], 0.0
            for i in order:
                keep.append(i)
                mass += p[i]
                if mass >= top_p:
                    break
            x = np.where(np.isin(np.arange(len(x)), keep), x, -np.inf)
            p = np.exp(x - x.max())
            p /= p.sum()
        out.append(p)
    return np.array(out).reshape(logits.shape)


@SETTINGS
@given(st.integers(0, 2**32 - 1), st.floats(0.05, 4.0), st.integers(0, 12), st.floats(0.01, 1.0))
def test_warp_matches_naive(seed, temperature, top_k, top_p):
    logits = torch.tensor(np.random.default_rng(seed).normal(0, 3, size=(2, 3, 10)), dtype=torch.float64)
    got = warp_logits(logits, temperature, top_k, top_p).numpy()
    want = naive_warp(logits.numpy(), temperature, top_k, top_p)
    # top-p boundary ties within float error are the only tolerated difference
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-12)
    assert (
        np.allclose(got, want, atol=1e-9)
        or np.isclose(np.sort(want.reshape(-1, 10), -1).cumsum(-1), top_p, atol=1e-9).any()
    )


def test_warp_examples():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    np.testing.assert_allclose(warp_logits(logits, 1.0).numpy(), [[0.5, 0.3, 0.15, 0.05]], rtol=1e-6)
    np.testing.assert_allclose(warp_logits(logits, 1.0, top_k=2).numpy(), [[0.625, 0.375, 0, 0]], rtol=1e-6)
    np.testing.assert_allclose(warp_logits(logits, 1.0, top_p=0.6).numpy(), [[0.625, 0.375, 0, 0]], rtol=1e-6)
    np.testing.assert_allclose(warp_logits(logits, 1.0, top_p=0.4).numpy(), [[1, 0, 0, 0]], rtol=1e-6)
    assert warp_logits(logits, 1.0, top_p=1e-9)[0, 0] == 1.0  # at least one token
    # mass exactly at top_p: the smallest set reaching it is enough
    half = warp_logits(torch.zeros(3, 2), 1.0, top_p=0.5)
    assert ((half == 1.0).sum(-1) == 1).all() and ((half == 0.0).sum(-1) == 1).all()
    p = warp_logits(logits, 2.0).numpy()[0]
    np.testing.assert_allclose(p, np.sqrt([0.5, 0.3, 0.15, 0.05]) / np.sqrt([0.5, 0.3, 0.15, 0.05]).sum(), rtol=1e-5)
    assert warp_logits(logits.half(), 1.0).dtype == torch.float32


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(temperature=-0.5), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(temperature=float("inf")), "temperature"),
        (dict(temperature="1"), "temperature"),
        (dict(temperature=True), "temperature"),
        (dict(temperature=1.0, top_k=-1), "top_k"),
        (dict(temperature=1.0, top_k=2.0), "top_k"),
        (dict(temperature=1.0, top_k=True), "top_k"),
        (dict(temperature=1.0, top_p=0.0), "top_p"),
        (dict(temperature=1.0, top_p=1.5), "top_p"),
        (dict(temperature=1.0, top_p=float("nan")), "top_p"),
    ],
)
def test_check_sampling_rejects(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        check_sampling(**kwargs)


def test_check_sampling_accepts_and_warp_rejects_greedy():
    assert check_sampling(0, 0, 1) == (0.0, 0, 1.0)
    assert check_sampling(0.7, np.int64(5), 0.9) == (0.7, 5, 0.9)
    with pytest.raises(ConfigError, match="greedy"):
        warp_logits(torch.zeros(1, 4), 0.0)
