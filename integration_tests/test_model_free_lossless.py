"""Model-free tree drafters (racer, token-recycling, suffix) on the embedded engine.

* Greedy: output token-identical to autoregressive decoding on 50 real prompts (code,
  chat, math, repetitive text), several prompts per ``generate`` call, drafter state freed;
  in the engine's default dtype (bf16 on the batch-invariant kernels on a CPU with native
  bf16), PLD included.
* Sampling: on a toy Markov target, the committed tokens of speculative sampling with each
  drafter's real trees (which depend on the history, as in serving) follow the target's
  distribution (chi-square over all 3-token continuations).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from specplug.adapters.hf.config import GenerationConfig
from specplug.drafters import registry
from specplug.drafters.feedback import Feedback, TopK
from specplug.drafters.tree import pack_trees
from specplug.drafters.verify import _verify_sampling_core, committed_tokens, verify_sampling

ALGORITHMS = ("racer", "token-recycling", "suffix")


@pytest.fixture(scope="module")
def prompts(default_engine, real_prompts):
    ids = real_prompts(default_engine, 14, repetitive=8)
    assert len(ids) >= 50
    return ids


def _generate(engine, prompts, name, budget, max_new, batch, options=None, policy=None):
    """Results in prompt order; batches group prompts of similar length (less prefill padding)."""
    drafter = registry.create(name, engine.vocab_size, options)
    cfg = GenerationConfig(max_new_tokens=max_new)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out = [None] * len(prompts)
    for i in range(0, len(order), batch):
        idx = order[i : i + batch]
        for j, r in zip(idx, engine.generate([prompts[j] for j in idx], drafter, budget, cfg, budget_policy=policy)):
            out[j] = r
    assert drafter.active_requests() == 0
    return out


@pytest.fixture(scope="module")
def ar_outputs(default_engine, prompts):
    return [r.output_ids for r in _generate(default_engine, prompts, "ar", 1, 24, 10)]


@pytest.mark.parametrize("name", (*ALGORITHMS, "pld"))
def test_greedy_identical_to_autoregressive(default_engine, prompts, ar_outputs, name):
    # a small budget keeps the CPU forward passes cheap; the trees still branch
    res = _generate(default_engine, prompts, name, 12, 24, 10)
    for i, (r, ref) in enumerate(zip(res, ar_outputs)):
        assert r.output_ids == ref, f"{name}: prompt {i} differs from autoregressive decoding"
    mat = sum(len(r.output_ids) for r in res) / sum(r.steps for r in res)
    assert mat > 1.2, f"{name} accepted almost nothing (mean accepted tokens {mat:.2f})"


@pytest.mark.parametrize("name,mode", [("racer", "static"), ("token-recycling", "dynamic")])
def test_greedy_identical_in_the_other_tree_mode(default_engine, prompts, ar_outputs, name, mode):
    """The tree mode that is not the algorithm's default (RACER: dynamic trees grown on the
    target's top-k probabilities; Token Recycling: its static template) on the same 50 prompts."""
    res = _generate(default_engine, prompts, name, 12, 24, 10, options={"tree": mode})
    for i, (r, ref) in enumerate(zip(res, ar_outputs)):
        assert r.output_ids == ref, f"{name}[{mode}]: prompt {i} differs from autoregressive decoding"
    mat = sum(len(r.output_ids) for r in res) / sum(r.steps for r in res)
    assert mat > 1.2, f"{name}[{mode}] accepted almost nothing (mean accepted tokens {mat:.2f})"


def test_greedy_identical_with_load_aware_budgets(default_engine, prompts, ar_outputs):
    """Trees cut by the load-aware policy (a GPU-like cost table: speculation pays) stay lossless."""
    import numpy as np

    from specplug.drafters.budget import BudgetPolicy, CostModel

    policy = BudgetPolicy(CostModel(np.array([1, 64, 256, 1024]), np.array([0.01, 0.01, 0.011, 0.03]), {}))
    res = _generate(default_engine, prompts, "racer", 16, 24, 10, options={"tree": "dynamic"}, policy=policy)
    for i, (r, ref) in enumerate(zip(res, ar_outputs)):
        assert r.output_ids == ref, f"racer[dynamic] + load-aware budgets: prompt {i} differs"


@pytest.mark.slow
@pytest.mark.parametrize("name", ALGORITHMS)
def test_greedy_identical_at_default_budget_long(default_engine, prompts, name):
    ref = [r.output_ids for r in _generate(default_engine, prompts, "ar", 1, 96, 10)]
    budget = registry.get(name).default_budget
    res = _generate(default_engine, prompts, name, budget, 96, 5)
    for i, (r, want) in enumerate(zip(res, ref)):
        assert r.output_ids == want, f"{name}: prompt {i} differs from autoregressive decoding"


# ---------------------------------------------------------------------------- sampling
def _toy_target(vocab: int, seed: int) -> np.ndarray:
    """P[a, b] = P(next = b | last = a): a first-order Markov chain with uneven rows."""
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(vocab, 0.7), size=vocab)
    return p / p.sum(axis=1, keepdims=True)


def _biased_verifier(tokens, parents, depth, valid, probs, gen):
    """A broken acceptance rule (accepts drafts 1.5x too often): the negative control."""

    def coin(p):
        return torch.rand(p.shape, generator=gen, dtype=p.dtype) < torch.clamp(1.5 * p, max=1.0)

    def sample(r):
        return torch.multinomial(r, 1, generator=gen).squeeze(1)

    return _verify_sampling_core(tokens, parents, depth, valid, probs, None, coin, sample)


def _sample_continuations(name: str, n_seq: int, length: int, vocab: int, seed: int, verifier=verify_sampling):
    """n_seq continuations of ``length`` tokens after a fixed context, speculative sampling
    with the drafter's trees (state carried across steps, as in serving)."""
    P = _toy_target(vocab, seed)
    topk_of = np.argsort(-P, axis=1)  # the target's top-k ids per token
    rng = np.random.default_rng(seed + 1)
    context = [0]
    for _ in range(40):  # a history for retrieval to match
        context.append(int(rng.choice(vocab, p=P[context[-1]])))
    gen = torch.Generator().manual_seed(seed)
    drafter = registry.create(name, vocab)
    out, drafted_nodes, steps = [], 0, 0
    batch = 64
    for start in range(0, n_seq, batch):
        rids = list(range(start, min(start + batch, n_seq)))
        seqs = {r: [] for r in rids}
        for r in rids:
            drafter.start(r, context, TopK.of(topk_of[context[:-1]]) if drafter.uses_target_topk else None)
        live = list(rids)
        while live:
            trees = drafter.propose(live, [16] * len(live))
            packed = pack_trees(trees)
            probs = torch.from_numpy(P[packed.tokens])  # [B, W, V] target after each node
            res = verifier(packed.tokens, packed.parents, packed.depth, packed.valid, probs, gen)
            accepted = [committed_tokens(packed.tokens, res, j) for j in range(len(live))]
            drafted_nodes += int(packed.sizes.sum()) - len(live)
            steps += len(live)
            drafter.observe_batch(
                Feedback.from_lists(
                    live,
                    trees,
                    accepted,
                    [TopK.of(topk_of[t.tokens]) for t in trees] if drafter.uses_target_topk else None,
                )
            )
            still = []
            for r, acc in zip(live, accepted):
                seqs[r] += acc
                if len(seqs[r]) >= length:
                    drafter.finish(r)
                else:
                    still.append(r)
            live = still
        out += [tuple(seqs[r][:length]) for r in rids]
    assert drafter.active_requests() == 0
    first = P[context[-1]]
    return out, P, first, drafted_nodes / steps


def _chi_square_pvalue(seqs, P, first, vocab):
    from scipy.stats import chisquare

    keys = [(a, b, c) for a in range(vocab) for b in range(vocab) for c in range(vocab)]
    exp = np.array([first[a] * P[a, b] * P[b, c] for a, b, c in keys]) * len(seqs)
    counts = {}
    for s in seqs:
        counts[s] = counts.get(s, 0) + 1
    obs = np.array([counts.get(k, 0) for k in keys], float)
    rare = exp < 5  # pool rare continuations: the chi-square approximation holds
    obs = np.append(obs[~rare], obs[rare].sum())
    exp = np.append(exp[~rare], exp[rare].sum())
    return chisquare(obs, exp).pvalue


@pytest.mark.parametrize("name", ALGORITHMS)
def test_sampling_follows_the_target_distribution(name):
    seqs, P, first, drafted = _sample_continuations(name, 4096, 3, 5, seed=7)
    assert drafted > 1.0, f"{name} drafted almost nothing; the test would not exercise verification"
    pvalue = _chi_square_pvalue(seqs, P, first, 5)
    assert pvalue > 1e-3, f"{name}: committed tokens do not follow the target (p = {pvalue:.2g})"


def test_sampling_check_catches_a_biased_verifier():
    seqs, P, first, _ = _sample_continuations("racer", 4096, 3, 5, seed=7, verifier=_biased_verifier)
    assert _chi_square_pvalue(seqs, P, first, 5) < 1e-6
