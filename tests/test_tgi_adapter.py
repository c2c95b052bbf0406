"""TGI adapter bookkeeping (adapters/tgi) and the TGI patch wrappers, engine-free.

The same patch code runs against TGI's real chooser in integration_tests/tgi when a TGI
source tree is available; here fake modules stand in for TGI.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch

from specplug.adapters.tgi import ChainSpeculation, tgi_chain
from specplug.drafters.base import Drafter
from specplug.drafters.errors import ConfigError
from specplug.drafters.tree import DraftTree
from specplug.patches import tgi
from specplug.patches.base import PatchError, PatchSet
from specplug.patches.tgi import version as tgi_version
from specplug.plugins import env


# ------------------------------------------------------------------ chain extraction
def test_tgi_chain_takes_the_best_chain_of_a_tree():
    # root 1 -> {2 (0.9) -> {3 (0.5), 4 (0.8)}, 5 (0.95) -> 6 (0.1)}
    tree = DraftTree(
        np.array([1, 2, 3, 4, 5, 6]), np.array([-1, 0, 1, 1, 0, 4]), np.array([1, 0.9, 0.5, 0.8, 0.95, 0.1])
    )
    assert tgi_chain(tree, 4).tolist() == [5, 6, 6, 6]
    assert tgi_chain(tree, 1).tolist() == [5]
    assert tgi_chain(DraftTree.single(7), 2).tolist() == [7, 7]
    assert tgi_chain(tree, 3, vocab_size=6).tolist() == [5, 5, 5]  # 6 is outside: the chain ends
    assert tgi_chain(tree, 2).dtype == np.int64


# ------------------------------------------------------------------ request bookkeeping
class Recorder(Drafter):
    """Proposes a fixed chain; records every call."""

    name = "recorder"
    uses_target_topk = True

    def __init__(self, vocab_size=100, chain=(11, 12)):
        super().__init__(vocab_size)
        self.chain = list(chain)
        self.calls = []
        self.ctx = {}

    def start(self, rid, context_ids, context_topk=None):
        self.calls.append(("start", rid, list(context_ids)))
        self.ctx[rid] = list(context_ids)

    def propose(self, rids, budgets):
        self.calls.append(("propose", list(rids), list(budgets)))
        return [DraftTree.chain(self.ctx[r][-1], self.chain) for r in rids]

    def observe(self, rid, tree, accepted, target_topk=None):
        self.calls.append(
            (
                "observe",
                rid,
                tree.tokens.tolist(),
                list(accepted),
                None if target_topk is None else target_topk.ids.tolist(),
            )
        )
        self.ctx[rid] += list(accepted)

    def finish(self, rid):
        self.calls.append(("finish", rid))
        self.ctx.pop(rid, None)

    def active_requests(self):
        return len(self.ctx)


def _rt(**kw):
    d = Recorder()
    return ChainSpeculation("pld", drafter=d, **kw), d


def test_prefill_starts_decode_observes_and_pads():
    rt, d = _rt()
    out = rt.draft(["a", "b"], [[1, 2, 3], [4, 5]], [9, 8], [1, 1], 3, vocab_size=100, prefill=True)
    assert d.calls[:2] == [("start", "a", [1, 2, 3, 9]), ("start", "b", [4, 5, 8])]
    assert d.calls[2] == ("propose", ["a", "b"], [4, 4])
    assert out.tolist() == [[11, 12, 12], [11, 12, 12]] and out.dtype == np.int64
    # decode: row a accepted 11 then bonus 7; row b rejected everything, bonus 6
    d.calls.clear()
    topk = np.arange(2 * 4 * 2).reshape(2, 4, 2)
    rt.draft(
        ["a", "b"],
        [[1, 2, 3, 9], [4, 5, 8]],
        [11, 7, 6],
        [2, 1],
        3,
        vocab_size=100,
        verified=[[11, 12, 12], [11, 12, 12]],
        topk=topk,
    )
    assert d.calls[0] == ("observe", "a", [9, 11, 12, 12], [11, 7], topk[0].tolist())
    assert d.calls[1] == ("observe", "b", [8, 11, 12, 12], [6], topk[1].tolist())
    assert d.calls[2] == ("propose", ["a", "b"], [4, 4])  # no restart: lengths agree
    assert rt.mean_accepted() == 1.5 and rt.active_requests() == 2 and rt.resyncs == 0


def test_budget_is_chain_length_plus_root_unless_asked():
    assert ChainSpeculation("pld").budget(5) == 6
    assert ChainSpeculation("ar").budget(5) == 6  # ar's default budget is 1
    assert ChainSpeculation("pld", tree_budget=32).budget(5) == 32
    assert ChainSpeculation("pld", tree_budget=2).budget(5) == 6


def test_step_without_verified_drafts_restarts_from_engine_context():
    rt, d = _rt()
    rt.draft([1], [[5, 6]], [7], [1], 2, vocab_size=100, prefill=True)
    d.calls.clear()
    rt.draft([1], [[5, 6, 7]], [8], [1], 2, vocab_size=100, verified=None)  # TGI verified nothing
    assert d.calls[:2] == [("finish", 1), ("start", 1, [5, 6, 7, 8])]
    assert rt.stats.verified_requests == 0 and rt.resyncs == 1


def test_chain_tgi_verified_instead_of_ours_restarts_the_request():
    rt, d = _rt()
    rt.draft([1, 2], [[5, 6], [5, 6]], [7, 7], [1, 1], 2, vocab_size=100, prefill=True)  # drafts [11, 12]
    d.calls.clear()
    # a fallback step: TGI verified its own n-gram [11, 30] for request 2 and accepted both
    rt.draft([1, 2], [[5, 6, 7]] * 2, [11, 8, 11, 30, 9], [2, 3], 2, vocab_size=100, verified=[[11, 12], [11, 30]])
    assert d.calls[0] == ("observe", 1, [7, 11, 12], [11, 8], None)
    assert ("finish", 2) in d.calls and ("start", 2, [5, 6, 7, 11, 30, 9]) in d.calls
    assert rt.resyncs == 1 and rt.stats.verified_requests == 1


def test_unknown_request_at_decode_restarts_from_engine_context():
    rt, d = _rt()
    rt.draft([3], [[1, 2, 3]], [4, 5], [2], 2, vocab_size=100, verified=[[4, 9]])
    assert d.calls[0] == ("start", 3, [1, 2, 3, 4, 5])


def test_inconsistent_outcome_resyncs_from_engine():
    rt, d = _rt()
    rt.draft([1], [[1, 2]], [3], [1], 2, vocab_size=100, prefill=True)
    d.calls.clear()
    # the engine says it accepted 40, which was not in the verified chain
    rt.draft([1], [[1, 2, 3]], [40, 41], [2], 2, vocab_size=100, verified=[[11, 12]])
    assert d.calls[:2] == [("finish", 1), ("start", 1, [1, 2, 3, 40, 41])]
    assert rt.resyncs == 1


def test_prefill_of_a_known_id_starts_afresh():
    rt, d = _rt()
    rt.draft([0], [[1, 2]], [3], [1], 2, vocab_size=100, prefill=True)  # e.g. warm-up request 0
    rt.draft([0], [[7, 8]], [9], [1], 2, vocab_size=100, prefill=True)  # a real request 0
    assert ("finish", 0) in d.calls and d.ctx[0] == [7, 8, 9]


def test_retain_finish_and_idle_eviction_bound_memory():
    rt, d = _rt(max_idle_steps=3, max_requests=3)
    rt.draft(list("abc"), [[1]] * 3, [2, 2, 2], [1, 1, 1], 2, vocab_size=100, prefill=True)
    rt.end_step()
    rt.retain(list("abc"), ["a", "c"])
    assert rt.active_requests() == 2 and ("finish", "b") in d.calls
    rt.draft(list("de"), [[1]] * 2, [2, 2], [1, 1], 2, vocab_size=100, prefill=True)
    rt.end_step()  # 4 active > cap 3: the least recently seen goes
    assert rt.active_requests() == 3 and not rt.known("a")
    for _ in range(4):  # nobody seen for 4 > 3 steps
        rt.end_step()
    assert rt.active_requests() == 0 and d.active_requests() == 0


def test_row_count_mismatch_and_empty_rows_raise():
    rt, _ = _rt()
    with pytest.raises(ValueError, match="accepted counts"):
        rt.draft([1, 2], [[1], [2]], [3], [1], 2, vocab_size=100, prefill=True)
    with pytest.raises(ValueError, match="committed no token"):
        rt.draft([1], [[1]], [], [0], 2, vocab_size=100, prefill=True)
    with pytest.raises(ValueError, match="sum to 1, but 2 ids"):
        rt.draft([1], [[1]], [3, 4], [1], 2, vocab_size=100, prefill=True)


def test_runtime_validates_algorithm_and_options():
    with pytest.raises(ConfigError, match="unknown algorithm"):
        ChainSpeculation("nope")
    with pytest.raises(ConfigError, match="unknown option"):
        ChainSpeculation("pld", {"bogus": 1})
    rt = ChainSpeculation("pld", {"max_ngram": 4})
    assert rt.drafter is None and rt.ensure_drafter(50).vocab_size == 50 and rt.options["max_ngram"] == 4


def test_pld_drafts_repeated_text_through_the_runtime():
    rt = ChainSpeculation("pld")
    ctx = [1, 2, 3, 4, 5, 1, 2]
    out = rt.draft(["r"], [ctx], [3], [1], 3, vocab_size=10, prefill=True)
    assert out.tolist() == [[4, 5, 1]]
    out = rt.draft(["r"], [ctx + [3]], [4, 5, 1, 2], [4], 3, vocab_size=10, verified=[[4, 5, 1]])
    assert out.tolist() == [[3, 4, 5]] and rt.mean_accepted() == 4


def _verify(chain, truth, n):
    """TGI's greedy chain verification against ``truth`` after ``n`` committed tokens."""
    acc = []
    for t in chain:
        if t != truth[n + len(acc)]:
            break
        acc.append(int(t))
    return acc + [truth[n + len(acc)]]


def test_racer_acceptance_calibration_learns_under_tgi():
    """RACER's dynamic trees tag each node with its calibration cell (``node_data``); TGI
    verifies the best chain only, and that chain must reach observe with its cells, else
    ``acceptance`` (hits / trials per cell) never learns under TGI."""
    vocab, speculate = 64, 4
    rt = ChainSpeculation("racer")
    assert rt.ensure_drafter(vocab).tree == "dynamic"  # the default
    phrase = [5, 17, 33, 2, 41, 9, 28, 12]
    truth = phrase * 12
    n = 10
    rng = np.random.default_rng(0)
    out = rt.draft(["r"], [truth[: n - 1]], [truth[n - 1]], [1], speculate, vocab_size=vocab, prefill=True)
    trials = [rt.drafter.acceptance.trials.sum()]
    for _ in range(8):
        chain = out[0].tolist()
        acc = _verify(chain, truth, n)
        # the target's top-k at each verified position: its own choice first
        ids = rng.integers(0, vocab, (1, speculate + 1, 8))
        for j in range(speculate + 1):
            ids[0, j, 0] = truth[n + j] if chain[:j] == truth[n : n + j] else ids[0, j, 0]
        probs = np.sort(rng.dirichlet(np.ones(8), (1, speculate + 1)), -1)[..., ::-1]
        out = rt.draft(
            ["r"],
            [truth[:n]],
            acc,
            [len(acc)],
            speculate,
            vocab_size=vocab,
            verified=[chain],
            topk=ids,
            topk_probs=probs,
        )
        n += len(acc)
        trials.append(rt.drafter.acceptance.trials.sum())
    assert rt.resyncs == 0 and rt.stats.verified_requests == 8
    assert rt.mean_accepted() > 2.0  # retrieval finds the repeated phrase
    assert trials[0] == 0 and (np.diff(trials) > 0).all()  # chain nodes counted at every step


# ------------------------------------------------------------------ version detection
def test_checkout_version_reads_workspace_cargo(tmp_path):
    (tmp_path / "server" / "text_generation_server").mkdir(parents=True)
    (tmp_path / "Cargo.toml").write_text(
        '[workspace]\nmembers = []\n\n[workspace.package]\nversion = "3.3.6-dev0"\nedition = "2021"\n'
    )
    init = tmp_path / "server" / "text_generation_server" / "__init__.py"
    init.write_text("")
    assert tgi_version.checkout_version(str(init)) == ("3.3.6-dev0", str(tmp_path / "Cargo.toml"))
    assert tgi_version.checkout_version(None) is None


def test_launcher_on_path_gives_the_version(tmp_path, monkeypatch):
    launcher = tmp_path / "text-generation-launcher"
    launcher.write_text("#!/bin/sh\necho 'text-generation-launcher 3.3.5'\n")
    launcher.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert tgi_version.launcher_version() == ("3.3.5", f"{launcher} --version")


def test_env_version_is_the_last_resort(monkeypatch):
    monkeypatch.setattr(tgi_version, "launcher_version", lambda: None)
    monkeypatch.setitem(sys.modules, "text_generation_server", types.ModuleType("text_generation_server"))
    monkeypatch.delenv(tgi_version.ENV_VERSION, raising=False)
    with pytest.raises(PatchError, match="SPECPLUG_TGI_VERSION.*3.3.5, 3.3.6 and 3.3.7"):
        tgi_version.detect_tgi_version()
    monkeypatch.setenv(tgi_version.ENV_VERSION, "3.3.7")
    assert tgi_version.detect_tgi_version() == ("3.3.7", "$SPECPLUG_TGI_VERSION")


# ------------------------------------------------------------------ the patches, on fake TGI modules
class FakeChooser:
    """Mimics HeterogeneousNextTokenChooser.__call__: greedy-verify chains, then draft."""

    def __call__(self, input_ids, scores, speculate, speculated_ids=None, speculative_scores=None, verbose=False):
        b = input_ids.shape[0]
        s = 1 if speculated_ids is None else speculated_ids.shape[1] + 1
        choice = scores.view(b, s, -1).argmax(-1)
        nxt, acc = [], []
        for i in range(b):
            n = 1
            while speculated_ids is not None and n < s and choice[i, n - 1] == speculated_ids[i, n - 1]:
                n += 1
            nxt += choice[i, :n].tolist()
            acc.append(n)
        next_ids, accepted_ids = torch.tensor(nxt), torch.tensor(acc)
        spec = sys.modules["fake_tgi_tokens"].create_n_gram_speculation(
            input_ids, next_ids, accepted_ids, speculate, verbose
        )
        return next_ids, None, None, accepted_ids, spec


def _fake_ngram(input_ids, next_ids, accepted_ids, speculate, verbose):
    return torch.zeros((accepted_ids.shape[0], speculate), dtype=input_ids.dtype)


class Req:
    def __init__(self, rid):
        self.id = rid


class FakeBatch:
    def __init__(self, rids, contexts):
        self.requests = [Req(r) for r in rids]
        self.all_input_ids = [list(c) for c in contexts]
        self.speculative_ids = None
        self.prefilling = True

    def filter(self, request_ids):
        keep = [i for i, r in enumerate(self.requests) if r.id in request_ids]
        self.requests = [self.requests[i] for i in keep]
        self.all_input_ids = [self.all_input_ids[i] for i in keep]
        if self.speculative_ids is not None:
            self.speculative_ids = self.speculative_ids[keep]
        return self


class FakeLM:
    """Mimics FlashCausalLM.generate_token; the target 'model' continues ``truth`` per request."""

    def __init__(self, truth, vocab=32, speculate=3):
        self.truth, self.vocab, self.speculate = truth, vocab, speculate
        self.chooser = FakeChooser()

    def _onehot(self, tok):
        row = torch.zeros(self.vocab)
        row[tok] = 1.0
        return row

    def generate_token(self, batch):
        rows = []
        for i, (req, ctx) in enumerate(zip(batch.requests, batch.all_input_ids)):
            t, n = self.truth[req.id], len(ctx)
            spec = [] if batch.speculative_ids is None else batch.speculative_ids[i].tolist()
            for j in range(len(spec) + 1):  # the target continues `truth` while the path follows it
                rows.append(self._onehot(t[n + j] if spec[:j] == t[n : n + j] else 0))
        width = max(len(c) for c in batch.all_input_ids)
        ids = torch.zeros((len(batch.requests), width), dtype=torch.int64)
        spec_in = None if batch.prefilling else batch.speculative_ids
        next_ids, _, _, acc, spec = self.chooser(ids, torch.stack(rows), self.speculate, spec_in)
        pos = 0
        for i, n in enumerate(acc.tolist()):
            batch.all_input_ids[i] += next_ids[pos : pos + n].tolist()
            pos += n
        batch.prefilling = False
        batch.speculative_ids = spec
        done = all(len(c) >= len(self.truth[r.id]) - 1 for r, c in zip(batch.requests, batch.all_input_ids))
        return [], (None if done else batch), None

    def warmup(self, batch, max_input_tokens, max_total_tokens):
        self.generate_token(batch)  # as TGI: one step on a batch that is then dropped
        return 1, 2, 3


class FakeCache:
    """TGI's server-side batch cache (``text_generation_server.cache.Cache``)."""

    def __init__(self):
        self.cache = {}

    def set(self, batch_id, batch):
        self.cache[batch_id] = batch

    def delete(self, batch_id):
        self.cache.pop(batch_id, None)

    def clear(self):
        for k in list(self.cache):
            self.delete(k)


@pytest.fixture
def fake_tgi(monkeypatch):
    tokens = types.ModuleType("fake_tgi_tokens")
    tokens.create_n_gram_speculation = _fake_ngram
    tokens.HeterogeneousNextTokenChooser = FakeChooser
    flash = types.ModuleType("fake_tgi_flash")
    flash.FlashCausalLM, flash.FlashCausalLMBatch = FakeLM, FakeBatch
    cache = types.ModuleType("fake_tgi_cache")
    cache.Cache = FakeCache
    monkeypatch.setitem(sys.modules, "fake_tgi_tokens", tokens)
    monkeypatch.setitem(sys.modules, "fake_tgi_flash", flash)
    monkeypatch.setitem(sys.modules, "fake_tgi_cache", cache)

    def retarget(base, module, target):
        return type(
            base.__name__,
            (base,),
            {"module": module, "target": target, "fingerprints": frozenset(), "alias_prefix": None},
        )

    ps = PatchSet(
        "FakeTGI",
        ((3, 3, 5), (3, 3, 7)),
        [
            retarget(tgi.NGramSpeculationPatch, "fake_tgi_tokens", "create_n_gram_speculation"),
            retarget(tgi.ChooserCallPatch, "fake_tgi_tokens", "HeterogeneousNextTokenChooser.__call__"),
            retarget(tgi.GenerateTokenPatch, "fake_tgi_flash", "FlashCausalLM.generate_token"),
            retarget(tgi.BatchFilterPatch, "fake_tgi_flash", "FlashCausalLMBatch.filter"),
            retarget(tgi.WarmupPatch, "fake_tgi_flash", "FlashCausalLM.warmup"),
            retarget(tgi.CacheDeletePatch, "fake_tgi_cache", "Cache.delete"),
        ],
        lambda: ("3.3.6-dev0", "test"),
    )
    ps.apply_for(tokens)
    ps.apply_for(flash)
    ps.apply_for(cache)
    yield ps
    tgi.disable()
    ps.revert_all()


def _text(seed, n=40):
    rng = np.random.default_rng(seed)
    phrase = rng.integers(1, 30, 6).tolist()
    return [int(x) for x in (phrase * 10)[:n]]


def test_patched_loop_drafts_with_specplug_and_cleans_up(fake_tgi):
    truth = {7: _text(1), 8: _text(2)}
    ctl = tgi.enable("pld")
    lm = FakeLM(truth)
    batch = FakeBatch([7, 8], [truth[7][:10], truth[8][:10]])
    _, batch, _ = lm.generate_token(batch)  # prefill
    assert ctl.runtime.active_requests() == 2
    for _ in range(3):
        _, batch, _ = lm.generate_token(batch)
    assert ctl.runtime.mean_accepted() == 4.0  # repeated phrase: every draft accepted
    assert [c == truth[r.id][: len(c)] for r, c in zip(batch.requests, batch.all_input_ids)] == [True, True]
    batch = batch.filter([8])  # router drops request 7
    assert not ctl.runtime.known(7) and ctl.runtime.known(8)
    while batch is not None:
        _, batch, _ = lm.generate_token(batch)
    assert ctl.runtime.active_requests() == 0  # batch finished: state freed
    assert ctl.errors == 0 and ctl.fallbacks == 0


def test_unpatched_behaviour_without_controller(fake_tgi):
    tgi.disable()
    truth = {1: _text(3)}
    lm = FakeLM(truth)
    batch = FakeBatch([1], [truth[1][:10]])
    _, batch, _ = lm.generate_token(batch)
    assert batch.speculative_ids.tolist() == [[0, 0, 0]]  # TGI's own drafting point ran


def test_drafting_outside_generate_token_falls_back(fake_tgi):
    ctl = tgi.enable("pld")
    chooser = FakeChooser()
    out = chooser(torch.zeros((1, 3), dtype=torch.int64), torch.eye(32)[:1], 2)
    assert out[4].tolist() == [[0, 0]] and ctl.fallbacks == 1


def test_drafter_exception_falls_back_and_resets(fake_tgi):
    ctl = tgi.enable("pld")
    truth = {1: _text(4)}
    lm = FakeLM(truth)
    batch = FakeBatch([1], [truth[1][:10]])
    _, batch, _ = lm.generate_token(batch)

    def broken(*a, **k):
        raise RuntimeError("drafter bug")

    ctl.runtime.draft = broken
    _, batch, _ = lm.generate_token(batch)
    assert ctl.errors == 1 and ctl.runtime.active_requests() == 0
    assert batch.speculative_ids.tolist() == [[0, 0, 0]]
    del ctl.runtime.draft
    _, batch, _ = lm.generate_token(batch)  # rebuilt from the engine's context
    assert ctl.runtime.active_requests() == 1 and ctl.runtime.resyncs == 0


def test_enable_from_env_validates(monkeypatch):
    monkeypatch.setenv(env.TGI_ALGORITHM, "pld")
    monkeypatch.setenv(env.TGI_OPTIONS, '{"max_ngram": 5}')
    try:
        assert tgi.enable_from_env().runtime.options["max_ngram"] == 5
        monkeypatch.setenv(env.TGI_OPTIONS, '{"max_ngram": "x"}')
        with pytest.raises(ConfigError, match="SPECPLUG_TGI_OPTIONS.*max_ngram"):
            tgi.enable_from_env()
        monkeypatch.setenv(env.TGI_ALGORITHM, "nonsense")
        with pytest.raises(ConfigError, match="unknown algorithm 'nonsense'; available"):
            tgi.enable_from_env()
    finally:
        tgi.disable()


def test_warns_once_when_tgi_runs_without_speculate(monkeypatch, caplog):
    mod = types.ModuleType("text_generation_server.utils.speculate")
    mod.get_speculate = lambda: 0
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    ctl = tgi.TgiSpeculation("pld")
    ctl.check_speculate()
    ctl.check_speculate()
    assert caplog.text.count("--speculate N") == 1


@pytest.mark.parametrize("failure", ["raises", "broken tree"])
def test_rows_the_drafter_fails_get_tgi_ngram_drafts(fake_tgi, failure, caplog):
    ctl = tgi.enable("pld")
    truth = {1: _text(5), 2: _text(6)}
    lm = FakeLM(truth)
    batch = FakeBatch([1, 2], [truth[1][:10], truth[2][:10]])
    _, batch, _ = lm.generate_token(batch)  # prefill: the drafter exists now
    drafter = ctl.runtime.drafter
    real = drafter.propose

    def failing(rids, budgets):
        if failure == "raises":
            raise RuntimeError("drafter bug")
        trees = real(rids, budgets)
        bad = DraftTree(np.array([trees[0].tokens[0], drafter.vocab_size + 3]), np.array([-1, 0]), np.ones(2))
        return [bad, *trees[1:]]

    for _ in range(2):  # two failing steps: logged once
        drafter.propose = failing
        _, batch, _ = lm.generate_token(batch)
        rows = [0, 1] if failure == "raises" else [0]
        assert [batch.speculative_ids[i].tolist() for i in rows] == [[0, 0, 0]] * len(rows)  # TGI's n-gram
        if failure != "raises":
            assert batch.speculative_ids[1].tolist() != [0, 0, 0]  # the healthy row keeps its draft
    assert ctl.fallback_rows == (4 if failure == "raises" else 2) and ctl.errors == 0
    assert caplog.text.count("TGI's own n-gram drafts them") == 1
    drafter.propose = real
    _, batch, _ = lm.generate_token(batch)  # the failed rows restart from TGI's tokens
    assert ctl.runtime.fallback_rows.tolist() == [False, False]
    assert ctl.runtime.active_requests() == 2


def test_warmup_and_cleared_batches_leave_no_state(fake_tgi):
    ctl = tgi.enable("pld")
    truth = {0: _text(7), 5: _text(8), 6: _text(9), 7: _text(10)}
    lm = FakeLM(truth)
    assert lm.warmup(FakeBatch([0], [truth[0][:10]]), None, None) == (1, 2, 3)
    assert ctl.runtime.active_requests() == 0  # warm-up's batch is gone: so is its state
    cache = FakeCache()
    a, b = FakeBatch([5, 6], [truth[5][:10], truth[6][:10]]), FakeBatch([7], [truth[7][:10]])
    _, a, _ = lm.generate_token(a)
    _, b, _ = lm.generate_token(b)
    cache.set(1, a)
    cache.set(2, b)
    assert ctl.runtime.active_requests() == 3
    cache.delete(2)  # ClearCache(id): every request of batch 2 left
    assert not ctl.runtime.known(7) and ctl.runtime.known(5) and ctl.runtime.known(6)
    cache.clear()  # ClearCache()
    assert ctl.runtime.active_requests() == 0
