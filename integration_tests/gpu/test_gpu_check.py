"""The GPU check runs green on this CPU: ``check.sh --device cpu --tiny`` (the smoke version of
the one call a session with a GPU makes), its outputs checked; and its identity verdicts."""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

from specplug.drafters.budget import load_cost_model

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
ALGORITHMS = {"racer", "token-recycling", "suffix", "pld"}


def _identity_module():
    spec = importlib.util.spec_from_file_location("gpu_check_identity", HERE / "identity.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def check_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    env = {**os.environ, "CHECK_TIMEOUT": "300"}
    env.pop("OUT", None)
    proc = subprocess.run(
        [str(HERE / "check.sh"), "--device", "cpu", "--tiny", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=330,
    )
    assert proc.returncode == 0, f"check.sh failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return out


def test_every_stage_passes_through_the_uninstalled_shim(check_out):
    summary = json.loads((check_out / "summary.json").read_text())
    assert summary["ok"] and set(summary["stages"]) == {"calibrate", "identity", "bench-drafters", "projection"}
    assert all(st["ok"] for st in summary["stages"].values())
    shim_init, drafters_init = summary["environment"]["specplug_from"]
    # the package came from check.sh's shim, its subpackages from the repository's folders
    assert not shim_init.startswith(str(ROOT)) and drafters_init == str(ROOT / "drafters" / "__init__.py")
    assert "# GPU check: PASS" in (check_out / "summary.md").read_text()


def test_the_cost_model_loads_as_the_policy_loads_it(check_out):
    path = check_out / json.loads((check_out / "summary.json").read_text())["files"]["cost_model"]
    model = load_cost_model(str(path))
    assert model.is_grid and len(model.points()) == 6  # batches 1,2 x widths 1,2,4
    data = json.loads(path.read_text())
    assert data["key"]["dtype"] == "bfloat16" and data["model"] == "random-weights:tiny"
    assert data["grid"] == {"batches": [1, 2], "widths": [1, 2, 4], "max_tokens": 8}


def test_greedy_output_is_identical_to_ar(check_out):
    report = json.loads((check_out / "identity.json").read_text())
    seen = {(r["dtype"], r["algorithm"]) for r in report["results"]}
    assert seen == {(d, a) for d in ("fp32", "bf16") for a in ALGORITHMS}
    for r in report["results"]:
        if r["dtype"] == "fp32" or r["kernels"] == "batch-invariant":
            assert r["identical"] == r["prompts"] and not r["mismatches"], r
        else:  # library bf16 kernels (a CPU without oneDNN): near ties are reported, not failed
            assert all(m["near_tie"] for m in r["mismatches"]), r
    assert max(r["mean_accepted_per_step"] for r in report["results"]) > 1.1, "no draft was ever accepted"


def test_bench_and_projection_outputs(check_out):
    bench = json.loads((check_out / "bench_drafters.json").read_text())
    assert {r["algorithm"] for r in bench["results"]} == ALGORITHMS
    summary = json.loads((check_out / "summary.json").read_text())
    projection = json.loads((check_out / summary["files"]["projection"]).read_text())
    assert [r["batch"] for r in projection["results"]] == [1, 4]
    assert "projection, not a measurement" in (check_out / "summary.md").read_text()


def test_a_mismatch_far_from_a_tie_is_a_failure():
    ident = _identity_module()

    class Args:
        seed, vocab, device = 0, 32, "cpu"

    ctx = ident.prompts_of(32, 1, 1)[0]
    exact = ident.make_tiny_llama(0, vocab_size=32, dtype=torch.bfloat16).double()  # as diagnose builds it
    logits = ident._last_logits(exact, ctx, "cpu")
    diag = ident.diagnose(ctx, int(logits.argmax()), int(logits.argmin()), torch.bfloat16, Args)
    assert not diag["near_tie"] and diag["fp64_picks"] == "ar" and diag["cause"].startswith("NOT a near tie")
    assert 0 <= diag["shape_noise"] < abs(diag["gap_fp64"]) and diag["ulp"] > 0
    far = ident.Mismatch(0, 3, 1, 2, **diag)
    near = ident.Mismatch(0, 3, 1, 2, **{**diag, "near_tie": True})
    out = ident.Outcome("bf16", "pld", "library", 4, 3, 1.5, [near])
    assert ident.verdict(out).startswith("near-tie mismatches (reported)")
    out.mismatches.append(far)
    assert ident.verdict(out).startswith("FAIL")
    for dtype, kernels in (("fp32", "library"), ("bf16", "batch-invariant")):
        assert ident.verdict(ident.Outcome(dtype, "pld", kernels, 4, 3, 1.5, [near])).startswith("FAIL")
