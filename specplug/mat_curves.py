"""``specplug mat-curves``: MAT vs tree budget, static vs dynamic trees, on the embedded engine.

    specplug mat-curves --algorithm racer --budgets 8,16,32,64,128 --limit 3 \
        --max-new-tokens 64 --json results/mat_vs_budget_racer.json

One engine, one ``run_bench`` per budget (AR baseline included, greedy, lossless check on);
writes JSON (every bench row), a Markdown table and, when matplotlib is installed, a PNG.
``--combine A.json B.json --json OUT.json`` merges runs over disjoint budgets (one process
per core) into one result.
"""

from __future__ import annotations

import json
import os
import sys

from specplug.drafters.errors import ConfigError


def add_arguments(p) -> None:
    p.add_argument("--algorithm", default="racer")
    p.add_argument("--budgets", default="8,16,32,64,128")
    p.add_argument("--prompts", default="humaneval,mtbench,gsm8k")
    p.add_argument("--limit", type=int, default=3)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--warmup", type=int, default=0)
    p.add_argument("--trees", default="static,dynamic", help="tree modes to run (comma-separated)")
    p.add_argument(
        "--combine",
        nargs="+",
        metavar="PART.json[:ALGO]",
        help="no run: merge the JSONs of runs over disjoint budgets (same model, prompts and "
        "sizes; e.g. two processes, one per core) into --json, with its table and plot; "
        "PART.json:ALGO takes only that algorithm's rows (e.g. a rerun of one tree mode)",
    )
    p.add_argument("--json", required=True)


def run(args) -> int:
    if args.combine:
        return _combine(args.combine, args.json)
    from specplug.bench import parse_tree_modes

    modes = parse_tree_modes(args.trees)
    if not modes:
        raise ConfigError(f"--trees: static, dynamic or static,dynamic; got {args.trees!r}")

    import torch

    torch.set_num_threads(1)
    from specplug.adapters.hf.engine import HFEngine
    from specplug.bench import run_bench
    from specplug.prompts import load_prompt_set, prompt_set_label

    sets = {prompt_set_label(n): load_prompt_set(n, limit=args.limit) for n in args.prompts.split(",")}
    engine = HFEngine.load()
    algos = [f"{args.algorithm}[{m}]" for m in modes]
    rows = []
    for b in [int(x) for x in args.budgets.split(",")]:
        rep = run_bench(engine, algos, sets, max_new_tokens=args.max_new_tokens, budget=b, warmup=args.warmup)
        for r in rep["results"]:
            if r["algorithm"] != "ar":
                rows.append(
                    {
                        k: r[k]
                        for k in (
                            "algorithm",
                            "prompt_set",
                            "prompts",
                            "budget",
                            "new_tokens",
                            "steps",
                            "mat",
                            "speedup_vs_ar",
                            "draft_ms_per_step",
                            "lossless_mismatches",
                        )
                    }
                )
                print(
                    f"budget {b:>4} {r['algorithm']:<18} {r['prompt_set']:<10} MAT {r['mat']:.3f} "
                    f"mismatches {r['lossless_mismatches']}",
                    flush=True,
                )
    out = {
        "model": rep["model"],
        "device": rep["device"],
        "torch_threads": 1,
        "config": {
            "algorithm": args.algorithm,
            "budgets": args.budgets,
            "prompts": args.prompts,
            "limit": args.limit,
            "max_new_tokens": args.max_new_tokens,
            "warmup": args.warmup,
            "command": "specplug mat-curves " + " ".join(sys.argv[2:]),
        },
        "results": rows,
    }
    _write(out, args.json)
    return 0


def _combine(paths: list[str], dest: str) -> int:
    """Merge runs over disjoint budgets into one result at ``dest``."""
    paths = list(paths)
    parts, only = [], []
    for i, spec in enumerate(paths):
        path, sep, algo = spec.rpartition(":")
        if not sep or "/" in algo or not os.path.isfile(path):
            path, algo = spec, None
        if not os.path.isfile(path):
            raise ConfigError(f"--combine: no such file {path!r}")
        paths[i] = path
        with open(path) as f:
            parts.append(json.load(f))
        only.append(algo)
    keys = ("algorithm", "prompts", "limit", "max_new_tokens", "warmup")
    first = parts[0]
    for path, d in zip(paths, parts):
        if (d["model"], d["device"]) != (first["model"], first["device"]) or any(
            d["config"][k] != first["config"][k] for k in keys
        ):
            raise ConfigError(
                f"--combine: {path} was run with another model or settings than {paths[0]} "
                f"(compare {', '.join(keys)}); only runs over disjoint budgets can be merged"
            )
    seen = set()
    rows = []
    for path, d, algo in zip(paths, parts, only):
        picked = [r for r in d["results"] if algo is None or r["algorithm"] == algo]
        if not picked:
            raise ConfigError(f"--combine: no rows of {algo!r} in {path}")
        for r in picked:
            key = (r["algorithm"], r["prompt_set"], r["budget"])
            if key in seen:
                raise ConfigError(
                    f"--combine: {path} repeats budget {r['budget']} for {r['algorithm']} on "
                    f"{r['prompt_set']}; merge runs over disjoint budgets only"
                )
            seen.add(key)
            rows.append(r)
    cfg = dict(first["config"])
    cfg["budgets"] = ",".join(str(b) for b in sorted({r["budget"] for r in rows}))
    cfg["command"] = " + ".join(d["config"]["command"] + (f" (rows of {a})" if a else "") for d, a in zip(parts, only))
    out = {
        "model": first["model"],
        "device": first["device"],
        "torch_threads": first.get("torch_threads", 1),
        "config": cfg,
        "results": rows,
    }
    _write(out, dest)
    return 0


def _write(out: dict, path: str) -> None:
    """The JSON, a Markdown table (set x tree mode, one MAT column per budget) and a PNG."""
    with open(path, "w") as f:
        json.dump(out, f, indent=2)
    rows = out["results"]
    root = os.path.splitext(path)[0]
    budgets = sorted({r["budget"] for r in rows})
    sets = list(dict.fromkeys(r["prompt_set"] for r in rows))
    algos = list(dict.fromkeys(r["algorithm"] for r in rows))
    lines = [
        "| prompt set | tree | " + " | ".join(f"MAT @{b}" for b in budgets) + " |",
        "|---|---|" + "---:|" * len(budgets),
    ]
    for s in sets:
        for a in algos:
            mats = {r["budget"]: r["mat"] for r in rows if r["prompt_set"] == s and r["algorithm"] == a}
            lines.append(f"| {s} | {a} | " + " | ".join(f"{mats[b]:.3f}" if b in mats else "-" for b in budgets) + " |")
    cfg = out["config"]
    with open(root + ".md", "w") as f:
        f.write(
            f"MAT vs budget, {out['model']} on {out['device']}, greedy, {cfg['limit']} prompts x "
            f"{cfg['max_new_tokens']} tokens per set\n\n" + "\n".join(lines) + "\n\n"
            f"command: `{cfg['command']}`\n"
        )
    from specplug.plots import mat_vs_budget_png

    mat_vs_budget_png(rows, root + ".png")
