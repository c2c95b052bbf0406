"""MAT and tokens/s of TGI's real model server: TGI's n-gram vs specplug's drafters.

One TGI server process (``tgi_serve.py``, TGI's ``FlashCausalLM`` with the flash Llama on the
IPEX CPU stand-in), SmolLM2-135M-Instruct in fp32, greedy; per prompt set, its prompts
served together (staggered arrivals) by the router in miniature, for each ``--speculate``
N: TGI's own n-gram drafting, then each specplug algorithm; once without speculation for
the speed baseline and the reference output. MAT: tokens committed per request per decode step, as
the router counts them. Tokens/s: generated tokens over the serving wall time; the stand-in's
kernels are not IPEX's and the machine is shared, so only ratios within one run mean
anything, and even those are noisy.

    TGI_SERVER_SRC=/path/to/tgi/server python integration_tests/tgi/measure_tgi_server.py \\
        --speculate 3,5,8 --limit 6 --max-new-tokens 128 --out results/tgi_server_mat

writes ``<out>.json`` (every run, with the router's and the session's counters) and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import tgi_src  # noqa: E402

ALGORITHMS = ["racer", "token-recycling", "suffix", "pld"]


def plan(args: argparse.Namespace, model_src: str) -> dict:
    """One run per (speculate, algorithm), every prompt of every set served together."""
    algs = ["tgi-ngram", *args.algorithms.split(",")]
    runs: list[dict] = [{"name": "none/0", "speculate": 0}]
    for i, n in enumerate(args.speculate):
        # short runs first, not measured: a new server's first shapes, the drafters' JIT
        for alg in algs if i == 0 else ["tgi-ngram"]:
            runs.append({"name": f"warm/{alg}/{n}", "speculate": n, "algorithm": alg, "n": 2, "max_new_tokens": 8})
        runs += [{"name": f"{alg}/{n}", "speculate": n, "algorithm": alg} for alg in algs]
    for r in runs:
        r.setdefault("max_new_tokens", args.max_new_tokens)
        r.setdefault("pattern", "concurrent")
    return {
        "model_src": model_src,
        "tiny": None,
        "kv_blocks": 1024,
        "warmup": {"max_input_tokens": 512, "max_prefill_tokens": 1024, "max_total_tokens": 1024},
        "prompts": [{"set": s, "limit": args.limit} for s in args.prompts.split(",")],
        "runs": runs,
    }


def set_mat(run: dict, first: int, count: int) -> float:
    """MAT of requests ``first .. first + count - 1``: tokens after the prefill's one per
    decode step that served them."""
    ids = [str(i) for i in range(first, first + count)]
    tokens = sum(len(run["outputs"][i]) - 1 for i in ids)
    steps = sum(run["steps"][i] - 1 for i in ids)
    return tokens / steps if steps else 0.0


def table(results: dict, args: argparse.Namespace) -> str:
    runs = {r["name"]: r for r in results["runs"]}
    sets = args.prompts.split(",")
    algs = ["tgi-ngram", *args.algorithms.split(",")]
    lines = [
        "# TGI's real model server on the CPU: TGI's n-gram vs specplug",
        "",
        f"command: `{results['command']}`",
        "",
        f"SmolLM2-135M-Instruct fp32, greedy, {args.limit} prompts of each set ({', '.join(sets)}) x "
        f"{args.max_new_tokens} new tokens, all {args.limit * len(sets)} served concurrently (staggered arrivals) "
        f"by the router in miniature over the `TextGenerationService` of a TGI checkout (version {results['boot'].get('version')}) "
        f"(FlashCausalLM, ATTENTION=paged, IPEX CPU stand-in), one process, {results['measure_wall_s'] / 60:.0f} min. "
        f"Outputs identical to TGI without speculation in every run: {results['lossless']}.",
        "",
        "## MAT (tokens per request per decode step)",
        "",
        "| prompts | --speculate | " + " | ".join(algs) + " |",
        "| --- | --- | " + " | ".join("---" for _ in algs) + " |",
    ]
    for j, s in enumerate(sets + ["all"]):
        for n in args.speculate:
            if s == "all":
                cells = [f"{runs[f'{a}/{n}']['router']['mat']:.3f}" for a in algs]
            else:
                cells = [f"{set_mat(runs[f'{a}/{n}'], j * args.limit, args.limit):.3f}" for a in algs]
            lines.append(f"| {s} | {n} | " + " | ".join(cells) + " |")
    base = runs["none/0"]["tps"]
    lines += [
        "",
        "## Server tokens/s, as ratios (noisy: a shared 2-core machine; the CPU stand-in's kernels are not IPEX's)",
        "",
        "Each cell: the run's tokens/s over TGI's own n-gram's at the same --speculate (TGI without "
        "specplug), and in brackets over TGI without speculation "
        f"({base:.1f} tokens/s here).",
        "",
        "| --speculate | " + " | ".join(algs) + " |",
        "| --- | " + " | ".join("---" for _ in algs) + " |",
    ]
    for n in args.speculate:
        ngram = runs[f"tgi-ngram/{n}"]["tps"]
        cells = [f"{runs[f'{a}/{n}']['tps'] / ngram:.2f} ({runs[f'{a}/{n}']['tps'] / base:.2f})" for a in algs]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--speculate", type=lambda t: [int(x) for x in t.split(",")], default=[3, 5, 8])
    ap.add_argument("--algorithms", default=",".join(ALGORITHMS))
    ap.add_argument("--prompts", default="humaneval,mtbench")
    ap.add_argument("--limit", type=int, default=6)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--out", default="results/tgi_server_mat")
    args = ap.parse_args(argv)
    reason = tgi_src.source_reason()
    if reason:
        print(reason, file=sys.stderr)
        return 2
    import subprocess

    import tgi_router

    from specplug.adapters.hf.models import default_model_path

    p = plan(args, str(default_model_path()))
    with tempfile.TemporaryDirectory() as tmp:
        src, out = pathlib.Path(tmp) / "plan.json", pathlib.Path(tmp) / "out.json"
        src.write_text(json.dumps(p))
        env = tgi_router.tgi_env(tgi_src.server_src(), tgi_src.deps_dir())
        t0 = time.perf_counter()
        subprocess.run([sys.executable, str(HERE / "tgi_serve.py"), str(src), str(out)], env=env, cwd=HERE, check=True)
        results = json.loads(out.read_text())
    results["measure_wall_s"] = time.perf_counter() - t0
    results["command"] = "python integration_tests/tgi/measure_tgi_server.py " + " ".join(argv or sys.argv[1:])
    results["machine"] = {"python": platform.python_version(), "cpus": __import__("os").cpu_count()}
    plain = results["runs"][0]["outputs"]
    results["lossless"] = all(r["outputs"] == plain for r in results["runs"] if not r["name"].startswith("warm/"))
    for r in results["runs"]:
        r["tps"] = r["router"]["tokens"] / r["router"]["wall_s"]
        r.pop("logs", None)
    stem = pathlib.Path(args.out)
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(results, indent=1))
    stem.with_suffix(".md").write_text(table(results, args))
    print(stem.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
