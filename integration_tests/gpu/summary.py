"""The GPU check's summary: ``summary.json`` (everything) and ``summary.md`` (what a person reads)."""

from __future__ import annotations

import json
import pathlib


def _load(path: pathlib.Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _calibration(data: dict) -> list[str]:
    pts = data["points"]
    key = data.get("key", {})
    lines = [
        f"{len(pts)} points, {key.get('dtype')} on {key.get('kernels')} kernels, {data.get('device_name')}, "
        f"model {data.get('model')}, {data.get('context_per_row')} cached tokens per row",
        "",
        "| batch | width | tokens | ms |",
        "|---:|---:|---:|---:|",
    ]
    corners = {(p["batch"], p["width"]) for p in pts if p["batch"] == 1 or p["width"] == 1}
    corners |= {(p["batch"], p["width"]) for p in pts if p["tokens"] == max(q["tokens"] for q in pts)}
    for p in sorted(pts, key=lambda p: (p["batch"], p["width"])):
        if (p["batch"], p["width"]) in corners:
            lines.append(f"| {p['batch']} | {p['width']} | {p['tokens']} | {1000 * p['seconds']:.2f} |")
    return lines


def _identity(data: dict) -> list[str]:
    lines = [
        f"tiny random Llama on {data.get('device_name')}, {data['settings']['prompts']} prompts x "
        f"{data['settings']['max_new_tokens']} tokens, default budgets, batch {data['settings']['batch']}",
        "",
        "| dtype | algorithm | kernels | identical | mean accepted / step | verdict |",
        "|---|---|---|---:|---:|---|",
    ]
    notes = []
    for r in data["results"]:
        lines.append(
            f"| {r['dtype']} | {r['algorithm']} | {r['kernels']} | {r['identical']}/{r['prompts']} | "
            f"{r['mean_accepted_per_step']:.2f} | {r['verdict']} |"
        )
        for m in r["mismatches"]:
            notes.append(
                f"- {r['dtype']} {r['algorithm']}, prompt {m['prompt']}, first difference at generated token "
                f"{m['first_diff']} (AR {m['ar_token']}, speculative {m['spec_token']}): {m['cause']}"
            )
    return lines + ([""] + notes if notes else [])


def _bench(data: dict) -> list[str]:
    lines = [
        "| algorithm | batch | budget | threads | propose us p50/p99 | observe us p50/p99 | accepted / step |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in data["results"]:
        lines.append(
            f"| {r['algorithm']} | {r['batch']} | {r['budget']} | {r.get('threads', 1)} | {r['propose_us_p50']:.1f}/{r['propose_us_p99']:.1f} | "
            f"{r['observe_us_p50']:.1f}/{r['observe_us_p99']:.1f} | {r['mean_accepted_per_step']:.2f} |"
        )
    return lines


def _projection(data: dict, note: str) -> list[str]:
    lines = [
        f"**{note}**",
        "",
        "| batch | AR tok/s | best fixed tok/s (budget) | load-aware tok/s | load-aware, padded tok/s |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in data["results"]:
        lines.append(
            f"| {r['batch']} | {r['ar_tokens_per_s']:.1f} | {r['best_fixed_tokens_per_s']:.1f} "
            f"({r['best_fixed_budget']}) | {r['policy_tokens_per_s']:.1f} | {r['policy_padded_tokens_per_s']:.1f} |"
        )
    return lines


def write_summary(summary: dict, out: pathlib.Path) -> str:
    """Write ``summary.json`` and ``summary.md`` into ``out``; return the Markdown."""
    files = {k: out / v for k, v in summary["files"].items()}
    env = summary["environment"]
    state = (
        "INCOMPLETE (stopped or still running)" if summary.get("incomplete") else "PASS" if summary["ok"] else "FAIL"
    )
    lines = [
        f"# GPU check: {state} ({summary['device']}, {summary['mode']})",
        "",
        f"{env.get('gpu', 'no GPU')}; host {env['host_cpu']} ({env['host_cores']} cores); torch {env['torch']} "
        f"(CUDA {env['cuda']}), transformers {env.get('transformers')}, numba {env.get('numba')}",
        "",
        "| stage | ok | seconds | output |",
        "|---|---|---:|---|",
    ]
    for name, st in summary["stages"].items():
        key = {"calibrate": "cost_model"}.get(name, name.replace("-", "_"))
        lines.append(f"| {name} | {st['ok']} | {st.get('seconds', '-')} | {summary['files'].get(key, '-')} |")
    sections = [
        ("Verify cost (calibrate)", "cost_model", _calibration),
        ("Greedy identity vs AR", "identity", _identity),
        ("Drafter host cost (bench-drafters)", "bench_drafters", _bench),
        ("Projected throughput (simulate-budgets)", "projection", lambda d: _projection(d, summary["projection_note"])),
    ]
    for title, key, fmt in sections:
        data = _load(files[key])
        lines += ["", f"## {title}", ""]
        lines += fmt(data) if data else ["(no output: see the stage's error in summary.json)"]
    for name, st in summary["stages"].items():
        if st.get("error"):
            lines += ["", f"## {name} error", "", "```", st["error"].strip(), "```"]
    md = "\n".join(lines) + "\n"
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (out / "summary.md").write_text(md, encoding="utf-8")
    return md
