"""A verify-cost model of vLLM's own engine step, for the load-aware policy (``SPECPLUG_VLLM_LOAD_AWARE``).

Run with the vLLM venv's python::

    /work/venvs/vllm/bin/python integration_tests/vllm/calibrate_vllm.py --out drafters/cost_models/vllm-cpu.json

One engine (SmolLM2-135M, fp32) with :class:`FixedWidth`, a proposer that drafts exactly
``width - 1`` tokens for every row; for each batch size B, B long requests decode while the
width steps through ``--widths``; the median time of ``eng.step()`` (schedule, forward,
rejection sampling, bookkeeping: what a step costs in vLLM) per (B, width) is one grid point
of :class:`specplug.drafters.budget.CostModel`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import driver  # noqa: E402  (vLLM's CPU environment first)

WIDTH = {"value": 1}  # the chain length + 1 FixedWidth drafts (set between steps)


class FixedWidth:
    """A custom_class proposer drafting ``WIDTH - 1`` copies of each row's last token."""

    def __init__(self, vllm_config: Any):
        self.k = int(vllm_config.speculative_config.num_speculative_tokens)

    def load_model(self, *args: Any, **kwargs: Any) -> None:
        pass

    def propose(self, sampled_token_ids, num_tokens_no_spec, token_ids_cpu, **kwargs: Any) -> list[list[int]]:
        n = min(WIDTH["value"] - 1, self.k)
        return [
            [int(token_ids_cpu[i, num_tokens_no_spec[i] - 1])] * n if s else [] for i, s in enumerate(sampled_token_ids)
        ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--batches", default="1,2,4,8,16")
    ap.add_argument("--widths", default="1,2,3,5,9")
    ap.add_argument("--steps", type=int, default=5)
    a = ap.parse_args(argv)
    import calibrate_vllm as shared  # the module vLLM imports the proposer from (this file runs as __main__)
    from models import smollm2
    from vllm import SamplingParams

    model = smollm2()
    widths = [int(w) for w in a.widths.split(",")]
    llm = driver.engine(model, "calibrate_vllm.FixedWidth", k=max(widths) - 1, max_model_len=2048)
    eng = llm.llm_engine
    prompt = driver.encode_prompts(model, ("humaneval",), 1)["humaneval"][0][:96]
    params = SamplingParams(temperature=0.0, max_tokens=1800, ignore_eos=True, detokenize=False)
    points = []
    for b in (int(x) for x in a.batches.split(",")):
        ids = [f"b{b}-{i}" for i in range(b)]
        shared.WIDTH["value"] = 1
        for rid in ids:
            eng.add_request(rid, {"prompt_token_ids": prompt}, params)
        for _ in range(3):  # prefill, then plain decode
            eng.step()
        for w in widths:
            shared.WIDTH["value"] = w
            eng.step()  # drafts of width w are proposed here, verified from the next step on
            times = []
            for _ in range(a.steps):
                t0 = time.perf_counter()
                eng.step()
                times.append(time.perf_counter() - t0)
            points.append({"tokens": b * w, "batch": b, "width": w, "seconds": statistics.median(times)})
            print(json.dumps(points[-1]), flush=True)
        eng.abort_request(ids)
        eng.step()
    driver.close(llm)
    meta = {
        "device": "cpu",
        "engine": "vLLM 0.32.0 (vllm-cpu), enforce_eager, fp32, 1 torch thread (vLLM's CPU default here)",
        "model": "SmolLM2-135M-Instruct",
        "context_per_row": len(prompt),
        "repeats": a.steps,
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "command": "python integration_tests/vllm/calibrate_vllm.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "extrapolation": "linear beyond the last point, with the last segment's slope",
        "note": "median eng.step() time per (batch, width) on a machine shared with other work",
    }
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump({**meta, "points": points}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
