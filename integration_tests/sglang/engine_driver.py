"""Drive SGLang's real ``Engine`` on the CPU: one engine per run, prompts given as token ids.

Used by the integration tests (run in a subprocess, JSON out) and for the measurements
in docs/sglang.md::

    SGLANG_USE_CPU_ENGINE=1 PYTHONPATH=integration_tests/sglang/cpu_kernels \\
        python integration_tests/sglang/engine_driver.py --model DIR --algorithm RACER \\
        --draft-tokens 16 --prompts prompts.json --max-new-tokens 64 --out result.json

``--algorithm NONE`` runs without speculation; ``NGRAM`` is SGLang's own. The prompts
file is a JSON list of token-id lists. Greedy decoding throughout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

CPU_FLAGS = dict(
    device="cpu",
    attention_backend="intel_amx",
    sampling_backend="pytorch",
    disable_cuda_graph=True,
    disable_overlap_schedule=True,
)


def engine_kwargs(
    model: str,
    algorithm: str,
    draft_tokens: int,
    dtype: str = "float32",
    max_running: int = 8,
    max_total_tokens: int = 16384,
) -> dict:
    kw = dict(
        model_path=model,
        skip_tokenizer_init=True,
        dtype=dtype,
        log_level="error",
        mem_fraction_static=0.3,
        max_total_tokens=max_total_tokens,
        max_running_requests=max_running,
        random_seed=0,
        **CPU_FLAGS,
    )
    if algorithm.upper() != "NONE":
        kw.update(speculative_algorithm=algorithm, speculative_num_draft_tokens=draft_tokens)
    return kw


def run(
    model: str,
    algorithm: str,
    draft_tokens: int,
    prompts: list[list[int]],
    max_new_tokens: int,
    batched: bool,
    dtype: str = "float32",
    warmup: bool = True,
    also_single: bool = False,
) -> dict:
    import sglang

    t0 = time.perf_counter()
    engine = sglang.Engine(**engine_kwargs(model, algorithm, draft_tokens, dtype))
    startup = time.perf_counter() - t0
    params = {"temperature": 0.0, "max_new_tokens": max_new_tokens, "ignore_eos": True}
    try:
        if warmup:
            engine.generate(input_ids=prompts[0][:8], sampling_params={**params, "max_new_tokens": 4})
        t0 = time.perf_counter()
        if batched:
            outs = engine.generate(input_ids=prompts, sampling_params=params)
        else:
            outs = [engine.generate(input_ids=p, sampling_params=params) for p in prompts]
        wall = time.perf_counter() - t0
        also = None
        if batched and also_single:
            also = [engine.generate(input_ids=p, sampling_params=params)["output_ids"] for p in prompts]
    finally:
        engine.shutdown()
    tokens = [o["output_ids"] for o in outs]
    gen = sum(len(t) for t in tokens)
    verify = sum(o["meta_info"].get("spec_verify_ct", 0) for o in outs)
    return {
        "algorithm": algorithm,
        "draft_tokens": draft_tokens,
        "batched": batched,
        "outputs": tokens,
        "outputs_single": also,
        "generated": gen,
        "wall_s": wall,
        "startup_s": startup,
        "tokens_per_s": gen / wall if wall > 0 else 0.0,
        # mean accepted tokens per verify step (bonus included); 1.0 without speculation
        "mat": gen / verify if verify else 1.0,
        "verify_steps": verify,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--algorithm", default="NONE")
    ap.add_argument("--draft-tokens", type=int, default=16)
    ap.add_argument("--prompts", required=True, help="JSON file: list of token-id lists")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--batched", action="store_true", help="one generate call for all prompts")
    ap.add_argument(
        "--also-single", action="store_true", help="with --batched: then send each prompt alone too (outputs_single)"
    )
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--out", default="-")
    args = ap.parse_args(argv)
    with open(args.prompts) as f:
        prompts = json.load(f)
    res = run(
        args.model,
        args.algorithm,
        args.draft_tokens,
        prompts,
        args.max_new_tokens,
        args.batched,
        args.dtype,
        also_single=args.also_single,
    )
    text = json.dumps(res)
    if args.out == "-":
        sys.stdout.write(text + "\n")
    else:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
