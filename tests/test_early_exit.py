"""DEL / early-exit controller (engine-free): selection against brute-force TPL, decayed
statistics against a per-position loop, the draft loop against a fake runner, bad configs."""

from __future__ import annotations

import numpy as np
import pytest

from specplug.drafters import registry
from specplug.drafters.budget import CostModel
from specplug.drafters.early_exit import (
    DELDrafter,
    EarlyExitDrafter,
    ExitCost,
    LayerStats,
    ShadowTokens,
    expected_tokens,
    feasible_layers,
    select_exit,
)
from specplug.drafters.errors import ConfigError

TABLE = CostModel(np.array([1, 2, 4, 8, 16, 32]), np.array([0.06, 0.092, 0.096, 0.109, 0.148, 0.287]), {})


def _cost(kind, L=30, head=0.2):
    return ExitCost(L, head * 100, np.full(L, (1 - head) * 100 / L), kind, TABLE)


def brute_tpl(alpha, e, g, L, kind, head=0.2):
    """The issue's formula, one (E, γ) at a time."""
    if alpha == 1.0:
        tok = g + 1
    else:
        tok = (1 - alpha ** (g + 1)) / (1 - alpha)
    if kind == "layers":
        return tok / ((L - e) + (g + 1) * e), 1.0 / L
    c1 = float(TABLE(1))
    draft = c1 * (head + (1 - head) * e / L)
    return tok / (g * draft + float(TABLE(g + 1))), 1.0 / c1


@pytest.mark.parametrize("kind", ["layers", "measured"])
@pytest.mark.parametrize("seed", range(6))
def test_select_exit_matches_brute_force(kind, seed):
    rng = np.random.default_rng(seed)
    L = 30
    layers = np.sort(rng.choice(np.arange(1, L), size=rng.integers(1, 8), replace=False))
    alpha = rng.uniform(0, 1, layers.shape[0]) ** rng.uniform(0.1, 2)
    if seed == 0:
        alpha[-1] = 1.0
    gmax = int(rng.integers(1, 19))
    min_gain = float(rng.choice([0.0, 0.05, 0.3]))
    cost = _cost(kind, L)
    best, arg, ar = -1.0, None, None
    for a, e in zip(alpha, layers):
        for g in range(1, gmax + 1):
            t, ar = brute_tpl(float(a), int(e), g, L, kind)
            if t > best + 1e-12:
                best, arg = t, (int(e), g)
    e, g, speed = select_exit(alpha, layers, cost, gmax, min_gain)
    assert speed == pytest.approx(best / ar, rel=1e-9)
    if best / ar > 1 + min_gain:
        assert (e, g) == arg
    else:
        assert e is None and g == 0


def test_expected_tokens_limits():
    assert expected_tokens(1.0, 4) == pytest.approx(5.0)
    assert expected_tokens(0.0, 4) == pytest.approx(1.0)
    assert expected_tokens(0.5, 1) == pytest.approx(1.5)


def test_no_speculation_when_nothing_pays():
    """SmolLM2-like agreement (<= 0.27 up to layer 24, 0.5 after) never beats AR on the
    measured CPU cost model; the paper's layer count (which assumes the verification reuses
    the draft KV and costs only L - E layers) would pick a shallow layer instead."""
    layers = np.arange(1, 30)
    alpha = np.where(layers < 25, 0.27, 0.5)
    e, g, speed = select_exit(alpha, layers, _cost("measured"), 18)
    assert e is None and speed < 0.75
    e, g, speed = select_exit(alpha, layers, _cost("layers"), 18)
    assert e == 1 and speed > 1.0


def test_feasible_layers_brute_force():
    cost = _cost("measured")
    feas = feasible_layers(cost, 18, 0.05)
    for e in range(1, 30):
        best = max(brute_tpl(1.0, e, g, 30, "measured")[0] for g in range(1, 19)) * float(TABLE(1))
        assert (e in feas) == (best > 1.05)
    assert 0 < feas.shape[0] < 29  # the deepest layers cannot pay even when always right


def test_layer_stats_match_a_per_position_loop():
    rng = np.random.default_rng(1)
    L, w = 12, 0.9
    st = LayerStats(L, w)
    ref = {k: np.zeros(L + 1) for k in ("m", "x", "cm", "cx")}
    for _ in range(20):
        layers = np.sort(rng.choice(np.arange(1, L), size=rng.integers(1, 5), replace=False))
        p = int(rng.integers(1, 6))
        hits = rng.random((layers.shape[0], p)) < 0.4
        conf = rng.random((layers.shape[0], p))
        st.update(layers, hits, conf)
        for k, l in enumerate(layers):
            for i in range(p):  # oldest first: decay, then add
                for key in ref:
                    ref[key][l] *= w
                if hits[k, i]:
                    ref["m"][l] += 1
                    ref["cm"][l] += conf[k, i]
                else:
                    ref["x"][l] += 1
                    ref["cx"][l] += conf[k, i]
    np.testing.assert_allclose(st.match, ref["m"], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(st.mismatch, ref["x"], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(st.conf_match, ref["cm"], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(st.conf_mismatch, ref["cx"], rtol=1e-12, atol=1e-12)
    l = int(np.argmax(st.match * st.mismatch))
    assert st.threshold(l) == pytest.approx(0.5 * (ref["cm"][l] / ref["m"][l] + ref["cx"][l] / ref["x"][l]))
    np.testing.assert_allclose(
        st.alpha(np.arange(L + 1)),
        np.divide(ref["m"], ref["m"] + ref["x"], out=np.zeros(L + 1), where=ref["m"] + ref["x"] > 0),
    )


# ----------------------------------------------------------------------------- a fake runner
class FakeRunner:
    """A synthetic target: the true next token after t is (t + 1) % V; exit layer l predicts it
    with a deterministic per-(layer, position) coin of probability ``agree[l]``."""

    def __init__(self, L=8, V=50, agree=None):
        self.num_layers, self.V = L, V
        self.agree = np.asarray(agree if agree is not None else np.linspace(0, 1, L + 1))
        self.draft_calls = []
        self.want = {}
        self.prompt_want = None

    def cost_profile(self):
        return 0.2, np.full(self.num_layers, 0.8 / self.num_layers)

    def _pred(self, tok, layer, salt):
        ok = (np.sin(tok * 12.9898 + layer * 78.233 + salt) * 43758.5453) % 1.0 < self.agree[layer]
        return np.where(ok, (tok + 1) % self.V, (tok + 7) % self.V), np.where(ok, 0.9, 0.2)

    def draft(self, rids, tokens, step, exit_layers):
        self.draft_calls.append((list(rids), int(step), np.asarray(exit_layers).tolist()))
        t, p = self._pred(np.asarray(tokens), np.asarray(exit_layers), 0.0)
        return t.astype(np.int64), p.astype(np.float32)

    def request_shadow(self, rid, layers):
        self.want[rid] = np.asarray(layers)

    def shadow(self, rid):
        layers = self.want.pop(rid, None)
        if layers is None:
            return None
        tok = np.array([3])
        t, p = self._pred(tok[None, :], layers[:, None], 1.0)
        return ShadowTokens(layers, t, p, (tok + 1) % self.V)

    def request_prompt_shadow(self, layers, n):
        self.prompt_want = (np.asarray(layers), n)

    def prompt_shadow(self, rid):
        if self.prompt_want is None:
            return None
        layers, n = self.prompt_want
        tok = np.arange(n)
        t, p = self._pred(tok[None, :], layers[:, None], 2.0)
        return ShadowTokens(layers, t, p, (tok + 1) % self.V)


def _run(drafter, runner, steps=40, rid="r"):
    """Greedy verification against the fake target's true continuation."""
    drafter.bind(runner)
    drafter.start(rid, [1, 2, 3])
    root, total = 3, 0
    for _ in range(steps):
        [tree] = drafter.propose([rid], [19])
        assert tree.tokens[0] == root
        truth = [(root + 1 + i) % runner.V for i in range(len(tree))]
        acc = 0
        while acc < len(tree) - 1 and tree.tokens[acc + 1] == truth[acc]:
            acc += 1
        accepted = truth[: acc + 1]
        drafter.observe(rid, tree, accepted)
        root = accepted[-1]
        total += len(accepted)
    drafter.finish(rid)
    assert drafter.active_requests() == 0
    return total / steps


def test_del_speculates_where_agreement_pays_and_not_elsewhere():
    L = 8
    good = FakeRunner(L, agree=np.r_[np.zeros(4), np.ones(L - 3)])  # layers >= 4 always right
    d = DELDrafter(50, cost="layers", probe_budget=0.5)
    mat = _run(d, good)
    assert mat > 3.0
    rep = d.bench_report()
    assert rep["speculative_steps"] > 30 and set(rep["exit_layer_counts"]) <= {4, 5, 6, 7}

    bad = FakeRunner(L, agree=np.full(L + 1, 0.1))
    d = DELDrafter(50, cost="layers", probe_budget=0.5)
    assert _run(d, bad) == 1.0
    assert d.bench_report()["speculative_steps"] == 0 and not bad.draft_calls


def test_dynamic_exit_stops_below_the_midpoint():
    runner = FakeRunner(8, agree=np.full(9, 0.6))
    d = DELDrafter(50, cost="layers", candidate_layers="4", min_gain=0.0, probe_budget=0.5)
    d.bind(runner)
    d.start("r", [1, 2])
    st = d._req["r"]
    st.stats.update([4], np.array([[True] * 30 + [False] * 5]), np.array([[0.9] * 30 + [0.2] * 5]))
    assert st.stats.threshold(4) == pytest.approx(0.55)
    [tree] = d.propose(["r"], [19])
    probs = st.draft_probs
    # drafting stopped at the first token under the threshold (kept), or at γ
    below = np.flatnonzero(probs < 0.55)
    assert len(tree) - 1 == (below[0] + 1 if below.shape[0] else st.gamma)
    d.finish("r")


def test_probe_cost_stays_within_budget():
    runner = FakeRunner(8, agree=np.full(9, 0.2))
    d = DELDrafter(50, cost="measured", probe_budget=0.02, seed_tokens=0)
    _run(d, runner, steps=400)
    assert 0 < d.credit.spent <= 0.02 * d.credit.earned_steps + 1e-12


def test_prompt_seeds_wait_until_probing_credit_repaid_the_last_one():
    """Where no layer pays, the statistics stay cold; each request re-seeding from its prompt
    would cost a few percent of every short request (the seed goes into debt once)."""

    class CountingRunner(FakeRunner):
        seeds = 0

        def request_prompt_shadow(self, layers, n):
            CountingRunner.seeds += 1
            super().request_prompt_shadow(layers, n)

        def prompt_shadow(self, rid):  # consumed once, as the engines' runners do
            out = super().prompt_shadow(rid)
            self.prompt_want = None
            return out

    runner = CountingRunner(8, agree=np.full(9, 0.05))
    d = DELDrafter(50, cost="measured", probe_budget=0.02, seed_tokens=32)
    _run(d, runner, steps=10, rid="r0")
    seed_cost = d.credit.spent
    for k in range(1, 6):
        _run(d, runner, steps=10, rid=f"r{k}")
    assert CountingRunner.seeds == 1 and d.credit.credit < 0  # 60 steps at 2% do not repay it
    assert d.credit.spent == seed_cost  # nor any shadow probe meanwhile
    free = DELDrafter(50, cost="measured", probe_budget=0.0, seed_tokens=32)  # 0: the seed alone
    _run(free, runner, steps=5, rid="f")
    assert CountingRunner.seeds == 2 and free.credit.spent > 0


def test_fixed_exit_drafts_draft_len_at_exit_layer():
    runner = FakeRunner(8, agree=np.full(9, 1.0))
    d = EarlyExitDrafter(50, exit_layer=3, draft_len=4)
    assert _run(d, runner, steps=10) == 5.0
    assert all(c[2] == [3] for c in runner.draft_calls)


def test_bad_configuration_gives_clear_errors():
    with pytest.raises(ConfigError, match="exit_layer=8 is out of range.*1..7"):
        EarlyExitDrafter(50, exit_layer=8).bind(FakeRunner(8))
    with pytest.raises(ConfigError, match="candidate_layers \\[9\\] out of range"):
        DELDrafter(50, candidate_layers="2,9").bind(FakeRunner(8))
    with pytest.raises(ConfigError, match="comma-separated"):
        DELDrafter(50, candidate_layers="two")
    with pytest.raises(ConfigError, match="bind"):
        DELDrafter(50).start("r", [1])
    with pytest.raises(ConfigError, match="exit_layer"):
        registry.create("early-exit", 50, {"exit_layer": 0})
    with pytest.raises(ConfigError, match="cost"):
        registry.create("del", 50, {"cost": "flops"})
    assert registry.get("DEL").name == "del" and registry.get("del").engine_name == "DEL"


def test_engines_without_a_runner_refuse_clearly():
    from types import SimpleNamespace

    from specplug.adapters.tgi.runtime import ChainSpeculation
    from specplug.plugins.sglang import validator_for

    with pytest.raises(ConfigError, match="TGI's speculator hook sees only final hidden states"):
        ChainSpeculation("del")
    args = SimpleNamespace(disable_overlap_schedule=True, device="cuda", speculative_num_draft_tokens=8)
    # SGLang runs DEL eagerly (its runner: adapters/sglang/early_exit.py), with CUDA graphs refused
    with pytest.raises(ConfigError, match="DEL runs partial-layer forwards eagerly.*pass --disable-cuda-graph"):
        validator_for(registry.get("del"))(args)
    validator_for(registry.get("del"))(SimpleNamespace(**vars(args), disable_cuda_graph=True))
    validator_for(registry.get("pld"))(args)  # the model-free ones still validate
