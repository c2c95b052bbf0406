"""Tensor parallelism for real: SGLang's CPU ``Engine`` at ``--tp-size 2`` (two scheduler
processes, one per core, talking over gloo) against ``--tp-size 1``, under RACER.

Every rank runs its own worker and drafting session; each writes a running digest of the
trees it proposes (``SPECPLUG_DIGEST_DIR``, ``specplug.drafters.digest``). Checked: greedy
output at TP 2 identical to TP 1, both ranks' digests identical at every step, and (the
drafter sees the same committed tokens and the same top-k ids at both sizes) the trees
identical to TP 1's too. One driver process runs both engines (tp_driver.py): 75 to 135 s on
2 shared cores, nearly all of it the engines' start-up; it runs by default.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from test_sglang_engine import HERE, TINY_PROMPTS, _tiny_llama_model, cpu_env, require_engine

DRIVER = HERE / "tp_driver.py"


@pytest.fixture(scope="module")
def tp_runs(tmp_path_factory):
    require_engine()
    tmp = tmp_path_factory.mktemp("tp")
    model = tmp / "tiny_llama"
    _tiny_llama_model(2, seed=0).save_pretrained(model)  # 4 heads, 2 KV heads, vocab 512: splits in 2
    prompts, out = tmp / "prompts.json", tmp / "runs.json"
    prompts.write_text(json.dumps(TINY_PROMPTS))
    cmd = [sys.executable, str(DRIVER), "--model", str(model), "--algorithm", "RACER", "--tp-sizes", "1,2"]
    cmd += ["--prompts", str(prompts), "--max-new-tokens", "24", "--draft-tokens", "16", "--out", str(out)]
    proc = subprocess.run(cmd, env=cpu_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"TP engines failed:\n{proc.stderr[-4000:]}"
    runs = {r["tp_size"]: r for r in json.loads(out.read_text())["runs"]}
    assert "drafter failed" not in proc.stderr, proc.stderr[-4000:]  # no step lost its drafts to an error
    return runs


def test_tp2_output_identical_to_tp1(tp_runs):
    one, two = tp_runs[1], tp_runs[2]
    assert two["outputs"] == one["outputs"]
    assert all(len(o) == 24 for o in two["outputs"])
    generated = sum(len(o) for o in two["outputs"])
    assert 0 < two["verify_steps"] < generated  # speculative verify steps that accepted drafts (MAT > 1)


def test_tp_ranks_propose_identical_trees(tp_runs):
    ranks = tp_runs[2]["ranks"]
    assert sorted(ranks) == ["0", "1"]
    assert all(r["header"]["tp_size"] == 2 and r["header"]["algorithm"] == "RACER" for r in ranks.values())
    a, b = ranks["0"]["digests"], ranks["1"]["digests"]
    assert a, "no step was drafted"
    first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
    assert a == b, f"TP ranks' trees part at step {first} of {len(a)} / {len(b)}"


def test_tp2_trees_identical_to_tp1(tp_runs):
    one, two = tp_runs[1]["ranks"]["0"]["digests"], tp_runs[2]["ranks"]["0"]["digests"]
    first = next((i for i, (x, y) in enumerate(zip(one, two)) if x != y), None)
    assert one == two, f"TP 1 and TP 2 trees part at step {first}"
