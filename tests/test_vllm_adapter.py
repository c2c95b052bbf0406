"""The vLLM adapter without vLLM: settings, chain choice, and the per-step translation
(:class:`specplug.adapters.vllm.VllmChains`) driven the way vLLM's runner drives it.
The real engine runs in integration_tests/vllm/."""

from __future__ import annotations

import numpy as np
import pytest

from specplug.adapters.vllm import VllmChains, budget_policy_from_env, proposer_class, settings_from_env
from specplug.drafters import registry
from specplug.drafters.errors import ConfigError
from specplug.drafters.session import expected_chain
from specplug.drafters.tree import DraftTree


def test_expected_chain_prefers_the_deeper_branch():
    # root -> a (0.6) -> leaf (0.1); root -> b (0.5) -> c (0.45) -> d (0.4)
    t = DraftTree(
        np.array([5, 1, 2, 3, 4, 6], np.int32),
        np.array([-1, 0, 0, 2, 3, 1], np.int32),
        np.array([1, 0.6, 0.5, 0.45, 0.4, 0.1], np.float32),
    )
    assert t.best_chain(4).tolist() == [0, 1, 5]  # best child at each level
    assert expected_chain(t, 4).tolist() == [0, 2, 3, 4]  # 1.35 expected tokens against 0.7
    assert expected_chain(t, 1).tolist() == [0, 1]
    assert expected_chain(DraftTree.single(7), 4).tolist() == [0]


def test_settings_and_errors():
    s = settings_from_env("racer", 4, {"SPECPLUG_VLLM_OPTIONS": '{"tree_budget": 16, "ngram": 3}'})
    assert s.tree_budget == 16 and s.options["ngram"] == 3 and s.k == 4
    assert settings_from_env("pld", 8, {}).tree_budget >= 9
    with pytest.raises(ConfigError, match="SPECPLUG_VLLM_OPTIONS.*unknown option"):
        settings_from_env("racer", 4, {"SPECPLUG_VLLM_OPTIONS": '{"bogus": 1}'})
    with pytest.raises(ConfigError, match="tree_budget must be an integer in \\[5, "):
        settings_from_env("racer", 4, {"SPECPLUG_VLLM_OPTIONS": '{"tree_budget": 2}'})
    with pytest.raises(ConfigError, match="not valid JSON"):
        settings_from_env("racer", 4, {"SPECPLUG_VLLM_OPTIONS": "{oops"})
    assert budget_policy_from_env({"SPECPLUG_VLLM_LOAD_AWARE": "off"}) is None
    assert budget_policy_from_env({}).padded is False  # vLLM verifies ragged chains
    with pytest.raises(ConfigError, match="SPECPLUG_VLLM_LOAD_AWARE"):
        budget_policy_from_env({"SPECPLUG_VLLM_LOAD_AWARE": "nope"})


def test_one_class_per_algorithm():
    import specplug.adapters.vllm as v

    for spec in registry.specs():
        if not spec.peer:
            cls = getattr(v, spec.engine_name)
            assert cls.algorithm == spec.name and cls.__module__ == "specplug.adapters.vllm"
    assert proposer_class("racer").__name__ == "RACER"


class _Batch:
    """vLLM's persistent batch as the proposer sees it: row ids and a token table."""

    def __init__(self, contexts: dict[str, list[int]], width: int = 256):
        self.order = list(contexts)
        self.ctx = contexts
        self.width = width

    def arrays(self):
        table = np.zeros((len(self.order), self.width), np.int32)
        n = np.zeros(len(self.order), np.int32)
        for i, rid in enumerate(self.order):
            c = self.ctx[rid]
            table[i, : len(c)] = c
            n[i] = len(c)
        return n, table


def _drive(chains: VllmChains, contexts: dict[str, list[int]], target, steps: int) -> dict[str, list[int]]:
    """A greedy chain verifier standing in for vLLM: accept drafts while they equal
    ``target(context)``, then one bonus; the next step's schedule names the drafts."""
    batch = _Batch({r: list(c) for r, c in contexts.items()})
    sampled = {rid: [batch.ctx[rid][-1]] for rid in batch.order}  # as after a prefill
    for rid in batch.order:
        batch.ctx[rid] = batch.ctx[rid][:-1]  # the prefill's token is appended below
    drafts: dict[str, list[int]] = {}
    for _ in range(steps):
        for rid in batch.order:
            batch.ctx[rid] += sampled[rid]
        n, table = batch.arrays()
        chains.on_schedule([], None, drafts)
        out = chains.step(batch.order, [sampled[r] for r in batch.order], n, table)
        drafts = {rid: d for rid, d in zip(batch.order, out) if d}
        for rid, d in zip(batch.order, out):
            assert len(d) <= chains.k
            got, ctx = [], list(batch.ctx[rid])
            for tok in d:
                want = target(ctx)
                if tok != want:
                    break
                got.append(tok)
                ctx.append(tok)
            got.append(target(ctx))
            sampled[rid] = got
    return {rid: batch.ctx[rid] + sampled[rid] for rid in batch.order}


def _cycle(ctx):
    return (ctx[-1] + 1) % 7 + 10  # a periodic continuation: retrieval drafters learn it


@pytest.mark.parametrize("algo", ["racer", "pld", "suffix", "token-recycling"])
def test_chains_follow_the_engine(algo):
    s = settings_from_env(algo, 4, {})
    chains = VllmChains(registry.create(algo, 64, s.options), s, max_model_len=200)
    ctx = {"a": [10, 11, 12, 13, 14, 15, 16, 10, 11, 12], "b": [12, 13, 14, 15, 16, 10, 11]}
    out = _drive(chains, ctx, _cycle, 12)
    for rid, seq in out.items():  # the stand-in verifier only ever commits the target's tokens
        start = len(ctx[rid])
        assert all(seq[i] == _cycle(seq[:i]) for i in range(start, len(seq)))
    st = chains.session.stats
    assert st.drafter_errors == 0 and st.bad_trees == 0 and st.restarts == 0
    if algo != "token-recycling":  # TR learns from top-k, which this stand-in does not send
        assert st.mean_accepted > 1.5, st
    chains.on_schedule(["a"], {"b"}, {})  # finished and preempted requests leave
    assert chains.active == 0 and chains.session.drafter.active_requests() in (0, None)


def test_a_chain_vllm_did_not_verify_restarts_the_request():
    s = settings_from_env("pld", 4, {})
    chains = VllmChains(registry.create("pld", 64, s.options), s, max_model_len=200)
    ctx = [10, 11, 12, 13, 10, 11, 12]
    n, table = np.array([len(ctx)]), np.array([ctx + [0] * 10])
    chains.on_schedule([], None, {})
    (d,) = chains.step(["a"], [[12]], n, table)
    assert d == [13, 10, 11, 12]
    # the scheduler trimmed the drafts to two: the pending chain is not what was verified
    ctx2 = ctx + [13, 10, 11]
    chains.on_schedule([], None, {"a": d[:2]})
    chains.step(["a"], [[13, 10, 11]], np.array([len(ctx2)]), np.array([ctx2 + [0] * 10]))
    assert chains.session.stats.restarts == 1 and chains.session.stats.verified_requests == 0


def test_topk_rows_follow_vllm_logits_layout():
    s = settings_from_env("racer", 4, {})
    chains = VllmChains(registry.create("racer", 64, s.options), s, max_model_len=200)
    k = chains.session.topk
    ids = np.arange(6 * k, dtype=np.int32).reshape(6, k)  # rows: 3 + 1 + 2 positions
    chains.on_topk(ids, None, [2, 0, 1])
    got, probs = chains._topk_rows([0, 2])
    assert probs is None and got.shape == (2, 3, k)
    assert got[0, :, 0].tolist() == [0, k, 2 * k] and got[1, :2, 0].tolist() == [4 * k, 5 * k]
    chains.on_topk(ids, None, [5, 0, 1])  # not laid out as declared: no feedback
    assert chains._topk_rows([0]) == (None, None)
