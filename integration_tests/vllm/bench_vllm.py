"""Acceptance length and tokens/s on vLLM's CPU engine: vLLM's ``ngram`` vs specplug's proposers.

Run with the vLLM venv's python (``integration_tests/vllm/setup_vllm_env.sh``)::

    /work/venvs/vllm/bin/python integration_tests/vllm/bench_vllm.py --out results/vllm_bench

Part 1 (acceptance): per method and K, one engine; per prompt set (HumanEval, MT-Bench, GSM8K)
its first ``--prompts`` prompts run together, greedy, ``--tokens`` new tokens each. Acceptance
length is vLLM's own (1 + accepted / drafts, from its spec-decode counters, per set as the
counters' difference); specplug's proposers run with fixed chain lengths here
(``SPECPLUG_VLLM_LOAD_AWARE=off``), as ngram does, so K is equal. Part 2 (load): ``--concurrent``
requests at once (prompts of all three sets), no speculation vs each method at the default
settings (load-aware chain lengths for specplug). Writes ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import driver  # noqa: E402  (sets vLLM's CPU environment before vLLM is imported)

SETS = ("humaneval", "mtbench", "gsm8k")
METHODS = ("ngram", "RACER", "TOKEN_RECYCLING", "SUFFIX", "PLD")


def _run_set(llm: Any, prompts: list[list[int]], tokens: int) -> dict[str, float]:
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True, detokenize=False)
    before = driver.spec_metrics(llm)
    t0 = time.perf_counter()
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    dt = time.perf_counter() - t0
    after = driver.spec_metrics(llm)
    n = sum(len(o.outputs[0].token_ids) for o in outs)
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in ("num_drafts", "num_draft_tokens", "num_accepted_tokens")}
    al = 1.0 + d["num_accepted_tokens"] / d["num_drafts"] if d["num_drafts"] else 1.0
    return {"tokens": n, "seconds": dt, "tokens_per_s": n / dt, "acceptance_length": al, **d}


def acceptance(model: str, prompts: dict[str, list[list[int]]], ks: list[int], tokens: int) -> list[dict]:
    rows = []
    os.environ["SPECPLUG_VLLM_LOAD_AWARE"] = "off"
    try:
        runs = [("AR", ks[0])] + [(m, k) for k in ks for m in METHODS]
        for method, k in runs:
            llm = driver.engine(model, None if method == "AR" else method, k=k)
            for name in SETS:
                r = _run_set(llm, prompts[name], tokens)
                # no speculation does not depend on K: one run, listed under every K
                for kk in ks if method == "AR" else [k]:
                    rows.append({"method": method, "k": kk, "set": name, **r})
                print(json.dumps(rows[-1]), flush=True)
            driver.close(llm)
    finally:
        del os.environ["SPECPLUG_VLLM_LOAD_AWARE"]
    return rows


def load(model: str, prompts: dict[str, list[list[int]]], k: int, n: int, tokens: int) -> list[dict]:
    mixed = [prompts[SETS[i % 3]][(i // 3) % len(prompts[SETS[i % 3]])] for i in range(n)]
    rows = []
    # AR first and last: on a shared machine the two bound the noise of the runs between
    for method in ("AR", *METHODS, "AR"):
        llm = driver.engine(model, None if method == "AR" else method, k=k)
        r = _run_set(llm, mixed, tokens)
        p = driver.proposer() if method not in ("AR", "ngram") else None
        if p is not None:
            r["speculated_share"] = p.report()["speculated_requests"] / max(1, p.report()["proposed_requests"])
        rows.append({"method": method, "k": k, "concurrent": n, **r})
        print(json.dumps(rows[-1]), flush=True)
        driver.close(llm)
    return rows


def _geo(xs: list[float]) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def tokens_per_step(r: dict) -> float:
    """Tokens each request commits per engine step it runs (accepted drafts + 1), from vLLM's
    counters: every step of a request yields one token beyond the drafts it accepted."""
    return r["tokens"] / max(1.0, r["tokens"] - r["num_accepted_tokens"])


def markdown(res: dict) -> str:
    acc, ks = res["acceptance"], sorted({r["k"] for r in res["acceptance"]})
    cell = {(r["method"], r["k"], r["set"]): r for r in acc}
    m = res["meta"]
    if not acc:
        lines = [
            f"# specplug on vLLM {m['vllm']} (CPU): tokens/s under load",
            "",
            f"`{m['command']}`; {m['host']}; {m['date']}.",
        ]
    else:
        lines = _acceptance_table(m, ks, cell)
    return _load_table(res, m, lines)


def _acceptance_table(m: dict, ks: list, cell: dict) -> list[str]:
    lines = [
        f"# specplug on vLLM {m['vllm']} (CPU): acceptance length and tokens/s",
        "",
        f"`{m['command']}`; {m['model']}, greedy, per set its first {m['prompts']} prompts run together, "
        f"{m['tokens']} new tokens each; {m['host']}; {m['date']}.",
        "",
        "- **AL**: vLLM's acceptance length, 1 + accepted / drafts (its spec-decode counters; a draft "
        "is one request's chain in one step, steps without a draft do not count).",
        "- **T/step**: tokens a request commits per engine step (all steps: tokens / (tokens - accepted)).",
        "- specplug runs at fixed chain lengths here (`SPECPLUG_VLLM_LOAD_AWARE=off`), as `ngram` does "
        "(vLLM's defaults: prompt_lookup_min = max = 5).",
        "- tok/s (x AR): one run, on a machine shared with other work; read the ratios, roughly.",
        "",
        "| method | K | "
        + " | ".join(f"{s} AL" for s in SETS)
        + " | AL geo-mean (vs ngram) | "
        + " | ".join(f"{s} T/step" for s in SETS)
        + " | T/step geo-mean (vs ngram) | "
        + " | ".join(f"{s} tok/s (x AR)" for s in SETS)
        + " |",
        "|---|---|" + "---|" * (3 * len(SETS) + 2),
    ]
    for k in ks:
        for method in ("AR", *METHODS):
            if (method, k, SETS[0]) not in cell:
                continue
            rows = [cell[(method, k, s)] for s in SETS]
            ng = [cell[("ngram", k, s)] for s in SETS] if ("ngram", k, SETS[0]) in cell else None
            als = [r["acceptance_length"] for r in rows]
            tps = [tokens_per_step(r) for r in rows]
            geo_al, geo_t = _geo(als), _geo(tps)
            vs_al = vs_t = ""
            if ng is not None and method not in ("AR", "ngram"):
                vs_al = f" ({geo_al / _geo([r['acceptance_length'] for r in ng]):.2f}x)"
                vs_t = f" ({geo_t / _geo([tokens_per_step(r) for r in ng]):.2f}x)"
            speed = [
                f"{r['tokens_per_s']:.1f} ({r['tokens_per_s'] / cell[('AR', k, s)]['tokens_per_s']:.2f})"
                for r, s in zip(rows, SETS)
            ]
            if method == "AR":
                al_txt, geo_al_txt = ["-"] * len(SETS), "-"
            else:
                al_txt, geo_al_txt = [f"{a:.2f}" for a in als], f"{geo_al:.2f}{vs_al}"
            lines.append(
                f"| {method} | {k} | "
                + " | ".join(al_txt)
                + f" | {geo_al_txt} | "
                + " | ".join(f"{t:.2f}" for t in tps)
                + f" | {geo_t:.2f}{vs_t} | "
                + " | ".join(speed)
                + " |"
            )
    return lines


def _load_table(res: dict, m: dict, lines: list[str]) -> str:
    if res.get("load"):
        ar = [r["tokens_per_s"] for r in res["load"] if r["method"] == "AR"]
        base = {**next(r for r in res["load"] if r["method"] == "AR"), "tokens_per_s": sum(ar) / len(ar)}
        lines += [
            "",
            f"## {base['concurrent']} concurrent requests (K = {base['k']}, {m['load_tokens']} tokens each, "
            "prompts of the three sets; specplug at its defaults: load-aware chain lengths, 'cpu' cost model)",
            "",
            f"x AR: against the mean of the AR runs (first and last: {', '.join(f'{x:.1f}' for x in ar)} tokens/s).",
            "",
            "| method | tokens/s | x AR | AL | T/step | rows drafted |",
            "|---|---|---|---|---|---|",
        ]
        for r in res["load"]:
            share = f"{r['speculated_share']:.0%}" if "speculated_share" in r else "-"
            al = "-" if r["method"] == "AR" else f"{r['acceptance_length']:.2f}"
            lines.append(
                f"| {r['method']} | {r['tokens_per_s']:.1f} | {r['tokens_per_s'] / base['tokens_per_s']:.2f} | {al} "
                f"| {tokens_per_step(r):.2f} | {share} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="results/vllm_bench", help="writes OUT.json and OUT.md")
    ap.add_argument("--prompts", type=int, default=6)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--k", default="4,8")
    ap.add_argument("--concurrent", type=int, default=16)
    ap.add_argument("--load-k", type=int, default=4)
    ap.add_argument("--load-tokens", type=int, default=64)
    ap.add_argument("--skip-acceptance", action="store_true")
    ap.add_argument("--skip-load", action="store_true")
    ap.add_argument("--render", action="store_true", help="only rewrite OUT.md from OUT.json")
    a = ap.parse_args(argv)
    if a.render:
        with open(a.out + ".json", encoding="utf-8") as f:
            res = json.load(f)
        with open(a.out + ".md", "w", encoding="utf-8") as f:
            f.write(markdown(res))
        return 0
    import vllm
    from models import smollm2

    model = smollm2()
    prompts = driver.encode_prompts(model, SETS, a.prompts)
    res: dict[str, Any] = {
        "meta": {
            "command": "python integration_tests/vllm/bench_vllm.py "
            + " ".join(argv if argv is not None else sys.argv[1:]),
            "vllm": vllm.__version__,
            "model": "SmolLM2-135M-Instruct (fp32)",
            "prompts": a.prompts,
            "tokens": a.tokens,
            "host": f"{platform.machine()}, {os.cpu_count()} cores, shared with other work",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        },
        "acceptance": [],
        "load": [],
    }
    if not a.skip_acceptance:
        res["acceptance"] = acceptance(model, prompts, [int(x) for x in a.k.split(",")], a.tokens)
    if not a.skip_load:
        res["load"] = load(model, prompts, a.load_k, a.concurrent, a.load_tokens)
        res["meta"]["load_tokens"] = a.load_tokens
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out + ".json", "w", encoding="utf-8") as f:
        json.dump(res, f, indent=1)
    if res["acceptance"] or res["load"]:
        with open(a.out + ".md", "w", encoding="utf-8") as f:
            f.write(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
