"""``specplug plot``: PNG plots of the dynamic-tree results (without matplotlib, none are drawn).

    specplug plot results/mat_vs_budget_racer.json results/simulated_throughput_racer_dynamic_cpu.json

redraws the PNG beside each JSON written by ``specplug mat-curves`` (MAT vs budget) or
``specplug simulate-budgets`` (throughput vs batch size).
"""

from __future__ import annotations

import json
import os
import sys

from specplug.drafters.errors import ConfigError


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no PNG (pip install matplotlib)", file=sys.stderr)
        return None
    return plt


def _save_log2_panel(plt, fig, ax, xlabel: str, ylabel: str, path: str) -> bool:
    """One panel with a log2 x axis and a legend, written to ``path``."""
    ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def mat_vs_budget_png(rows, path: str) -> bool:
    """One panel per prompt set: MAT against budget (log2 axis), one line per algorithm."""
    plt = _pyplot()
    if plt is None:
        return False
    sets = list(dict.fromkeys(r["prompt_set"] for r in rows))
    algos = list(dict.fromkeys(r["algorithm"] for r in rows))
    fig, axes = plt.subplots(1, len(sets), figsize=(4 * len(sets), 3.2), sharey=True, squeeze=False)
    for ax, s in zip(axes[0], sets):
        for a in algos:
            pts = sorted((r["budget"], r["mat"]) for r in rows if r["prompt_set"] == s and r["algorithm"] == a)
            ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=a)
        ax.set_xscale("log", base=2)
        ax.set_title(s)
        ax.set_xlabel("budget (nodes)")
    axes[0][0].set_ylabel("MAT")
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def cost_curve_png(points, path: str) -> bool:
    """Verify seconds against tokens per row, one line per batch size (``specplug calibrate``)."""
    plt = _pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for b in sorted({p.get("batch", 1) for p in points}):
        row = sorted((p.get("width", p["tokens"]), p["seconds"]) for p in points if p.get("batch", 1) == b)
        ax.plot([w for w, _ in row], [1000 * s for _, s in row], label=f"batch {b}", marker="o")
    return _save_log2_panel(plt, fig, ax, "tokens per row (tree width)", "verify pass (ms)", path)


def throughput_png(rows, path: str) -> bool:
    """Simulated tokens/s against batch size: AR, the best fixed budget, the policy."""
    plt = _pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    bs = [r["batch"] for r in rows]
    ax.plot(bs, [r["ar_tokens_per_s"] for r in rows], label="AR", marker="o")
    ax.plot(bs, [r["best_fixed_tokens_per_s"] for r in rows], label="best fixed budget", marker="s")
    ax.plot(bs, [r["policy_tokens_per_s"] for r in rows], label="load-aware policy", marker="^")
    if all("policy_padded_tokens_per_s" in r for r in rows):
        ax.plot(
            bs,
            [r["policy_padded_tokens_per_s"] for r in rows],
            label="policy, one width per batch",
            marker="v",
            linestyle="--",
        )
    return _save_log2_panel(plt, fig, ax, "batch size", "tokens/s (simulated)", path)


def replot(json_path: str) -> str:
    """Redraw the PNG beside ``json_path``; its path, or "" without matplotlib."""
    if not os.path.isfile(json_path):
        raise ConfigError(f"no such file {json_path!r}")
    with open(json_path, encoding="utf-8") as f:
        data = json.load(f)
    rows = data.get("results") or []
    png = os.path.splitext(json_path)[0] + ".png"
    if rows and "budget" in rows[0] and "mat" in rows[0]:
        ok = mat_vs_budget_png(rows, png)
    elif rows and "batch" in rows[0]:
        ok = throughput_png(rows, png)
    else:
        raise ConfigError(f"{json_path} is neither a mat-curves nor a simulate-budgets result")
    return png if ok else ""


def add_arguments(p) -> None:
    p.add_argument(
        "json",
        nargs="+",
        metavar="RESULT.json",
        help="JSON written by `specplug mat-curves` or `specplug simulate-budgets`",
    )


def run(args) -> int:
    for p in args.json:
        out = replot(p)
        if out:
            print(f"wrote {out}")
    return 0
