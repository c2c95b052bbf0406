"""``specplug bench``: run_bench's numbers and JSON shape (on a scripted engine and on a tiny
random Llama through the real embedded engine), the interleaved order, and CLI errors."""

from __future__ import annotations

import json
import sys
import types
from types import SimpleNamespace

import pytest

from specplug import bench, cli
from specplug.drafters import registry
from specplug.prompts import Prompt


# ------------------------------------------------------------------ a scripted engine
class ScriptedEngine:
    """Greedy 'model' whose next token repeats the token `period` back: periodic text that
    prompt lookup predicts well. Verifies draft trees like the reference greedy verifier.
    ``lossy=True`` corrupts the output whenever a draft token is accepted (to prove that
    mismatches are counted)."""

    vocab_size = 64
    device = "cpu"
    model_name = "scripted"

    def __init__(self, period=5, lossy=False):
        self.period, self.lossy = period, lossy
        self.calls: list[tuple[str, tuple[int, ...], int]] = []
        self.policies: list = []

    def encode(self, prompt=None, messages=None):
        text = prompt if prompt is not None else messages[-1]["content"]
        return [3 + ord(c) % 50 for c in text][:24]

    def _next(self, ctx):
        return ctx[-self.period] if len(ctx) >= self.period else (ctx[-1] + 1) % self.vocab_size

    def generate(self, batch, drafter, budget, config, budget_policy=None):
        ids = list(batch[0])
        self.calls.append((drafter.name, tuple(ids), budget))
        self.policies.append(budget_policy)
        rid = ("req", len(self.calls))
        drafter.start(rid, ids)
        out, steps, acc_per_step = [], 0, []
        while len(out) < config.max_new_tokens:
            tree = drafter.propose([rid], [budget])[0]
            assert len(tree.tokens) <= budget and tree.tokens[0] == (ids + out)[-1]
            ctx, node, accepted = ids + out, 0, []
            while True:
                t = self._next(ctx + accepted)
                kids = [c for c in range(1, len(tree.tokens)) if tree.parents[c] == node and tree.tokens[c] == t]
                if kids and self.lossy:
                    t = (t + 1) % self.vocab_size
                accepted.append(t)
                if not kids or self.lossy:
                    break
                node = kids[0]
            accepted = accepted[: config.max_new_tokens - len(out)]
            drafter.observe(rid, tree, accepted)
            out += accepted
            steps += 1
            acc_per_step.append(len(accepted))
        drafter.finish(rid)
        assert drafter.active_requests() == 0
        return [
            SimpleNamespace(
                output_ids=out,
                steps=steps,
                accepted_per_step=acc_per_step,
                draft_time_s=1e-4 * steps,
                verify_time_s=1e-3 * steps,
                total_time_s=1.1e-3 * steps,
                finish_reason="length",
            )
        ]


def _sets(n=3):
    return {
        "code": [Prompt(id=f"c{i}", text=f"def f{i}(x):\n    return x + {i}\n" * 2) for i in range(n)],
        "chat": [
            Prompt(id=f"m{i}", messages=({"role": "user", "content": f"question number {i}?"},)) for i in range(n)
        ],
    }


CFG = SimpleNamespace(max_new_tokens=24)
TOP_KEYS = {"model": str, "device": str, "torch_threads": int, "results": list}


def _check_shape(report, algorithms, sets):
    for k, t in TOP_KEYS.items():
        assert isinstance(report[k], t), k
    assert set(report) <= set(TOP_KEYS) | {"config", "dtype"}
    rows = report["results"]
    assert [(r["algorithm"], r["prompt_set"]) for r in rows] == [(a, s) for s in sets for a in algorithms]
    for r in rows:
        for k, t in bench.RESULT_KEYS.items():
            assert k in r, k
            assert type(r[k]) is t, (k, r[k])
    return {(r["algorithm"], r["prompt_set"]): r for r in rows}


def test_run_bench_numbers_on_scripted_engine():
    eng = ScriptedEngine()
    sets = _sets()
    rep = bench.run_bench(eng, ["pld"], sets, warmup=1, gen_config=CFG, seed=None)
    by = _check_shape(rep, ["ar", "pld"], sets)
    for s in sets:
        ar, pld = by[("ar", s)], by[("pld", s)]
        assert ar["speedup_vs_ar"] == 1.0 and ar["mat"] == 1.0
        assert ar["new_tokens"] == pld["new_tokens"] == 3 * 24 == ar["steps"]
        assert ar["lossless_mismatches"] == 0 and pld["lossless_mismatches"] == 0
        assert pld["mat"] > 2.0 and pld["steps"] < ar["steps"]
        assert pld["mat"] == pytest.approx(pld["new_tokens"] / pld["steps"])
        assert pld["draft_ms_per_step"] == pytest.approx(0.1)
        assert ar["budget"] == 1 and pld["budget"] == registry.get("pld").default_budget
        assert pld["speedup_vs_ar"] == pytest.approx(pld["tokens_per_s"] / ar["tokens_per_s"])
    json.dumps(rep)  # serialisable


def test_mismatches_are_counted():
    rep = bench.run_bench(ScriptedEngine(lossy=True), ["pld"], _sets(), warmup=0, gen_config=CFG, seed=None)
    by = {(r["algorithm"], r["prompt_set"]): r for r in rep["results"]}
    assert by[("pld", "code")]["lossless_mismatches"] == 3
    assert by[("pld", "code")]["mismatched_prompts"] == ["c0", "c1", "c2"]
    assert by[("ar", "code")]["lossless_mismatches"] == 0


def test_sampling_reports_null_mismatches():
    rep = bench.run_bench(ScriptedEngine(), ["pld"], _sets(1), warmup=0, gen_config=CFG, seed=None, temperature=0.7)
    assert all(r["lossless_mismatches"] is None for r in rep["results"])


def test_interleaved_rotated_order_and_warmup():
    eng = ScriptedEngine()
    sets = _sets(2)
    bench.run_bench(eng, ["pld", "ar"], sets, warmup=2, gen_config=CFG, seed=None)
    names = [c[0] for c in eng.calls]
    # warm-up: first 2 prompts of the first set, each algorithm, ar first
    assert names[:4] == ["ar", "pld", "ar", "pld"]
    measured = eng.calls[4:]
    assert len(measured) == 4 * 2
    firsts = [measured[i][0] for i in range(0, len(measured), 2)]
    assert firsts == ["ar", "pld", "ar", "pld"]  # rotated per prompt
    for i in range(0, len(measured), 2):  # both algorithms on the same prompt back to back
        assert measured[i][1] == measured[i + 1][1]


def test_budget_override_and_options():
    eng = ScriptedEngine()
    rep = bench.run_bench(
        eng, ["ar", "pld"], _sets(1), warmup=0, gen_config=CFG, seed=None, budget=4, options={"pld": {"max_draft": 2}}
    )
    assert {c[0]: c[2] for c in eng.calls} == {"ar": 1, "pld": 4}
    pld = [r for r in rep["results"] if r["algorithm"] == "pld"][0]
    assert pld["budget"] == 4 and pld["mat"] <= 3.0
    with pytest.raises(bench.ConfigError, match="budget"):
        bench.run_bench(eng, ["pld"], _sets(1), gen_config=CFG, budget=2000)
    with pytest.raises(bench.ConfigError, match="unknown option"):
        bench.run_bench(eng, ["pld"], _sets(1), gen_config=CFG, options={"pld": {"nope": 1}})


def test_parse_helpers():
    assert bench.parse_algorithms("pld") == ["ar", "pld"]
    assert bench.parse_algorithms("PLD, ar ,pld,") == ["ar", "pld"]
    with pytest.raises(bench.ConfigError, match="available: .*ar.*pld"):
        bench.parse_algorithms("ar,warp-drive")
    assert bench.parse_options('{"pld": {"max_ngram": 4}}', ["ar", "pld"]) == {"pld": {"max_ngram": 4}}
    with pytest.raises(bench.ConfigError, match="not benchmarked"):
        bench.parse_options('{"pld": {}}', ["ar"])
    with pytest.raises(bench.ConfigError, match="JSON object"):
        bench.parse_options('{"pld": 3}', ["ar", "pld"])


# ------------------------------------------------------------------ CLI
def _main(argv, monkeypatch):
    monkeypatch.setattr(cli, "COMMANDS", {"bench": cli.COMMANDS["bench"]})
    return cli.main(argv)


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--algorithms", "ar,warp-drive"], "unknown algorithm 'warp-drive'; available: .*pld"),
        (["--budget", "0"], "budget must be an integer in 1..1024"),
        (["--options", '{"pld": {"bogus": 1}}'], "unknown option"),
        (["--options", "{bad json"], "not valid JSON"),
        (["--prompts", "nope"], "unknown prompt set"),
        (["--temperature", "-1"], "temperature"),
        (["--temperature", "0.8", "--top-p", "0"], "top_p"),
        (["--seeds", "3"], "--seeds > 1 needs sampling"),
    ],
)
def test_cli_errors_exit_2_before_loading_a_model(argv, match, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "specplug.adapters.hf.engine", None)  # import would fail
    assert _main(["bench", *argv], monkeypatch) == 2
    err = capsys.readouterr().err
    assert err.startswith("specplug: error:")
    import re

    assert re.search(match, err), err


@pytest.mark.parametrize("policy_flags", [[], ["--fixed-budget"], ["--cost-model", "cpu"]])
def test_cli_writes_json_and_markdown(tmp_path, monkeypatch, capsys, policy_flags):
    fake = types.ModuleType("specplug.adapters.hf.engine")
    engines = []

    class HFEngine(ScriptedEngine):
        @classmethod
        def load(cls, model_path=None, device="cpu", dtype="auto"):
            engines.append(cls())
            return engines[-1]

    from specplug.adapters.hf import cost
    from specplug.drafters.budget import default_cost_model
    from specplug.drafters.cost_cache import CachedCost

    measured = []

    def fake_measure(engine, **kw):  # the default: this engine's cost model, measured once
        measured.append(engine)
        return CachedCost(default_cost_model("cpu"), "measured", "/cache/x.json", {"engine": "scripted"}, 1.5)

    monkeypatch.setattr(cost, "engine_cost_model", fake_measure)

    fake.HFEngine = HFEngine
    fake.GenerationConfig = lambda max_new_tokens: SimpleNamespace(max_new_tokens=max_new_tokens)
    monkeypatch.setitem(sys.modules, "specplug.adapters.hf.engine", fake)
    import torch

    threads = torch.get_num_threads()
    out = tmp_path / "r.json"
    try:
        rc = _main(
            [
                "bench",
                "--algorithms",
                "pld",
                "--prompts",
                "humaneval,gsm8k",
                "--limit",
                "2",
                "--max-new-tokens",
                "8",
                "--json",
                str(out),
                "--no-progress",
                "--threads",
                "1",
                *policy_flags,
            ],
            monkeypatch,
        )
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    rep = json.loads(out.read_text())
    [eng] = engines
    cfg = rep["config"]
    spec_policies = [p for (name, _, _), p in zip(eng.calls, eng.policies) if name == "pld"]
    assert all(p is None for (name, _, _), p in zip(eng.calls, eng.policies) if name == "ar")
    if policy_flags == ["--fixed-budget"]:
        assert cfg["budget_policy"] == "fixed" and not measured
        assert all(p is None for p in spec_policies)
    else:
        assert cfg["budget_policy"] == "load-aware"
        assert spec_policies and all(p is not None for p in spec_policies)
        if policy_flags:
            assert cfg["cost_model"]["name"] == "cpu" and not measured
        else:
            assert measured == [eng] and cfg["cost_model"]["source"] == "measured"
            assert cfg["cost_model"]["measure_s"] == 1.5
    by = _check_shape(rep, ["ar", "pld"], ["humaneval", "gsm8k"])
    assert rep["torch_threads"] == 1 and rep["model"] == "scripted"
    assert all(r["prompts"] == 2 and r["new_tokens"] == 16 for r in by.values())
    md = (tmp_path / "r.md").read_text()
    assert md.count("\n| ar ") == 2 and "| pld | gsm8k |" in md
    stdout = capsys.readouterr().out
    assert "speedup" in stdout and "humaneval" in stdout


# ------------------------------------------------------------------ the real embedded engine
def _engine_module():
    try:
        import specplug.adapters.hf.engine as m
    except ImportError as e:  # pragma: no cover - only before the engine lands
        pytest.skip(f"embedded engine not available: {e}")
    return m


def _tiny_engine():
    m = _engine_module()
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(cfg).eval()

    class ByteTok:  # ids 3..95 from characters; no chat template needed for text prompts
        eos_token_id = 2

        def __call__(self, text, **kw):
            return {"input_ids": [3 + ord(c) % 93 for c in text]}

        def encode(self, text, **kw):
            return [3 + ord(c) % 93 for c in text]

        def decode(self, ids, **kw):
            return "".join(chr(i) for i in ids)

    return m.HFEngine(model, ByteTok())


def test_run_bench_tiny_llama_real_engine():
    eng = _tiny_engine()
    m = _engine_module()
    sets = {"code": [Prompt(id=f"p{i}", text=("ab cd ab cd ef " * 4) + str(i)) for i in range(2)]}
    rep = bench.run_bench(eng, ["pld"], sets, warmup=1, gen_config=m.GenerationConfig(max_new_tokens=16), seed=0)
    by = _check_shape(rep, ["ar", "pld"], ["code"])
    assert by[("ar", "code")]["speedup_vs_ar"] == 1.0
    assert by[("ar", "code")]["mat"] == 1.0
    assert by[("pld", "code")]["lossless_mismatches"] == 0
    assert by[("pld", "code")]["new_tokens"] == by[("ar", "code")]["new_tokens"] > 0
    assert by[("pld", "code")]["mat"] > 1.0  # drafts were accepted, so the lossless check means something


@pytest.mark.slow
def test_cli_default_engine_smoke(tmp_path, monkeypatch):
    _engine_module()
    import torch

    threads = torch.get_num_threads()
    out = tmp_path / "b.json"
    try:
        rc = _main(
            [
                "bench",
                "--algorithms",
                "pld",
                "--prompts",
                "humaneval,mtbench,gsm8k",
                "--limit",
                "2",
                "--max-new-tokens",
                "8",
                "--json",
                str(out),
                "--no-progress",
            ],
            monkeypatch,
        )
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    rep = json.loads(out.read_text())
    by = _check_shape(rep, ["ar", "pld"], ["humaneval", "mtbench", "gsm8k"])
    for s in ("humaneval", "mtbench", "gsm8k"):
        assert by[("ar", s)]["speedup_vs_ar"] == 1.0
        assert by[("pld", s)]["lossless_mismatches"] == 0


def test_run_bench_seeds_and_nucleus_on_tiny_llama():
    """--seeds: every prompt generated once per seed; MAT per seed and its spread reported;
    the warp settings recorded."""
    eng = _tiny_engine()
    sets = {"code": [Prompt(id=f"p{i}", text=("ab cd ab cd ef " * 4) + str(i)) for i in range(2)]}
    rep = bench.run_bench(
        eng, ["pld"], sets, warmup=0, max_new_tokens=12, seed=5, temperature=0.8, top_p=0.95, top_k=20, seeds=3
    )
    by = {(r["algorithm"], r["prompt_set"]): r for r in rep["results"]}
    assert set(by) == {("ar", "code"), ("pld", "code")}
    cfg = rep["config"]
    assert (cfg["seeds"], cfg["temperature"], cfg["top_p"], cfg["top_k"]) == (3, 0.8, 0.95, 20)
    for r in by.values():
        assert r["prompts"] == 2 and r["seeds"] == 3 and len(r["mat_by_seed"]) == 3
        assert r["mat_spread"] >= 0.0 and r["lossless_mismatches"] is None
    assert by[("ar", "code")]["mat_by_seed"] == [1.0, 1.0, 1.0]
    assert "±" in bench.format_table(rep)
    with pytest.raises(bench.ConfigError, match="seeds"):
        bench.run_bench(eng, ["pld"], sets, warmup=0, max_new_tokens=4, seeds=2)  # greedy
