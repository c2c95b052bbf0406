"""Acceptance (MAT) and tokens/s of every specplug algorithm in SGLang's real engine on the
CPU, against SGLang without speculation and SGLang's own NGRAM, on the same prompts.

    SGLANG_USE_CPU_ENGINE=1 OMP_NUM_THREADS=1 PYTHONPATH=integration_tests/sglang/cpu_kernels \\
        python integration_tests/sglang/measure_cpu.py --prompts humaneval --limit 4 \\
        --max-new-tokens 96 --draft-tokens 16 --out results/sglang_cpu.json

``NAME@load`` runs algorithm NAME with load-aware widths (``SPECPLUG_SGLANG_LOAD_AWARE`` set
to ``--cost-model``, default: the shipped CPU table); ``--options`` sets
``SPECPLUG_SGLANG_OPTIONS`` for every specplug algorithm of the run.

Each algorithm runs in its own engine (a subprocess of engine_driver.py); requests are
sent one at a time (tokens/s = generated tokens / wall time of the generate calls).
Outputs are also compared with the no-speculation run (greedy: they must be identical).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
ALGORITHMS = ["NONE", "NGRAM", "PLD", "RACER", "TOKEN_RECYCLING", "SUFFIX"]


def tokenized_prompts(model: str, name: str, limit: int) -> list[list[int]]:
    from transformers import AutoTokenizer

    from specplug.prompts import load_prompt_set

    tok = AutoTokenizer.from_pretrained(model)
    out = []
    for p in load_prompt_set(name, limit=limit):
        if p.text is not None:
            out.append(tok(p.text)["input_ids"])
        else:
            out.append(
                tok.apply_chat_template(p.messages, add_generation_prompt=True, tokenize=True, return_dict=False)
            )
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="HF dir (default: specplug's SmolLM2)")
    ap.add_argument("--prompts", default="humaneval")
    ap.add_argument("--limit", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--draft-tokens", type=int, default=16)
    ap.add_argument("--algorithms", default=",".join(ALGORITHMS))
    ap.add_argument("--out", default="-")
    ap.add_argument("--cost-model", default="cpu", help="cost table for NAME@load rows (name or JSON path)")
    ap.add_argument("--options", default=None, help="SPECPLUG_SGLANG_OPTIONS for the specplug algorithms")
    args = ap.parse_args(argv)
    model = args.model
    if model is None:
        from specplug.adapters.hf.models import default_model_path

        model = str(default_model_path())
    prompts = tokenized_prompts(model, args.prompts, args.limit)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        pfile = os.path.join(tmp, "prompts.json")
        with open(pfile, "w") as f:
            json.dump(prompts, f)
        for label in args.algorithms.split(","):
            algo, _, mode = label.partition("@")
            env = dict(os.environ)
            env.pop("SPECPLUG_SGLANG_LOAD_AWARE", None)
            if mode == "load":
                env["SPECPLUG_SGLANG_LOAD_AWARE"] = args.cost_model
            elif mode:
                ap.error(f"unknown mode {mode!r} in {label!r}; use NAME or NAME@load")
            if args.options and algo not in ("NONE", "NGRAM"):
                env["SPECPLUG_SGLANG_OPTIONS"] = args.options
            out = os.path.join(tmp, f"{label}.json")
            cmd = [
                sys.executable,
                str(HERE / "engine_driver.py"),
                "--model",
                model,
                "--algorithm",
                algo,
                "--draft-tokens",
                str(args.draft_tokens),
                "--prompts",
                pfile,
                "--max-new-tokens",
                str(args.max_new_tokens),
                "--out",
                out,
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                print(f"{algo}: failed\n{proc.stderr[-3000:]}", file=sys.stderr)
                continue
            with open(out) as f:
                res = json.load(f)
            res["algorithm"] = label
            rows.append(res)
            print(f"{label:16s} MAT {res['mat']:.2f}  {res['tokens_per_s']:.1f} tok/s", file=sys.stderr, flush=True)
    base = next((r for r in rows if r["algorithm"] == "NONE"), None)
    for r in rows:
        r["identical_to_no_spec"] = None if base is None else r["outputs"] == base["outputs"]
        r["speedup_vs_no_spec"] = None if base is None else r["tokens_per_s"] / base["tokens_per_s"]
    summary = {
        "model": model,
        "prompts": args.prompts,
        "n_prompts": len(prompts),
        "max_new_tokens": args.max_new_tokens,
        "draft_tokens": args.draft_tokens,
        "cost_model": args.cost_model,
        "options": args.options,
        "runs": [{k: v for k, v in r.items() if k != "outputs"} for r in rows],
    }
    text = json.dumps(summary, indent=1)
    if args.out == "-":
        print(text)
    else:
        pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(args.out).write_text(text)
    print("\n| algorithm | MAT | tok/s | speedup | identical |\n|---|---|---|---|---|", file=sys.stderr)
    for r in summary["runs"]:
        sp = r["speedup_vs_no_spec"]
        print(
            f"| {r['algorithm']} | {r['mat']:.2f} | {r['tokens_per_s']:.1f} | "
            f"{'' if sp is None else f'{sp:.2f}x'} | {r['identical_to_no_spec']} |",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
