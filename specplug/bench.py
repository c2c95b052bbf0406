"""``specplug bench``: algorithms side by side on prompt sets, on the embedded engine.

Method (what the numbers mean):

- ``ar`` (no speculation, budget 1) is always run as the baseline, first in the list,
  even when ``--algorithms`` does not name it; ``speedup_vs_ar`` needs it.
- Every algorithm runs in one process on the same prompts, interleaved: for each
  prompt, each algorithm in turn, the order rotated by one per prompt so that slow
  drift (thermal, other processes) spreads evenly. Before measuring, each algorithm
  generates for the first ``--warmup`` prompts of the first set (discarded); fresh
  drafters are then created, and each algorithm keeps one drafter for the whole
  measured run (as a server would: drafters that learn across requests do so).
- ``mat`` = generated tokens / verify steps (mean accepted tokens per step, bonus
  token included; AR's is 1.0).
- ``tokens_per_s`` = new tokens / wall time of ``engine.generate`` (prefill included),
  summed over the set's prompts; ``speedup_vs_ar`` = that over AR's on the same set.
  ``median_speedup_vs_ar`` (extra) is the median of the per-prompt ratios.
- ``draft_ms_per_step`` = the engine's drafting time (propose + observe) / steps.
- ``lossless_mismatches`` = prompts whose output ids differ from AR's. Greedy decoding
  only: with ``--temperature > 0`` outputs legitimately differ and it is ``null``.
- ``--budget`` sets the tree budget (nodes including the root) of every speculative
  algorithm; by default each uses its registered ``default_budget``. AR's is always 1.

The engine/drafter loop is :func:`run_bench` (no I/O besides an optional progress
bar); :func:`run` is the command-line wrapper.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from specplug import (
    peers,  # noqa: F401 (registers the benchmark peers, e.g. sglang-ngram)
    policy_args,
)
from specplug.adapters.hf.precision import DTYPE_CHOICES
from specplug.drafters import registry
from specplug.drafters.base import check_budget
from specplug.drafters.errors import ConfigError

BASELINE = "ar"
DEFAULT_PROMPTS = "humaneval,mtbench,gsm8k"

#: per-result keys required by the JSON contract, with their types
RESULT_KEYS: dict[str, type] = {
    "algorithm": str,
    "prompt_set": str,
    "prompts": int,
    "new_tokens": int,
    "steps": int,
    "mat": float,
    "tokens_per_s": float,
    "speedup_vs_ar": float,
    "draft_ms_per_step": float,
    "lossless_mismatches": int,
}


# ------------------------------------------------------------------ argument checks
TREE_MODES = ("static", "dynamic")


def split_variant(name: str, options: Mapping[str, Any] | None = None) -> tuple[str, dict]:
    """``"racer[dynamic]"`` -> ("racer", options + {"tree": "dynamic"}); plain names pass through.

    The bracket picks the ``tree`` option of algorithms that have one (racer,
    token-recycling); anything else is a ConfigError naming the valid forms."""
    text = str(name).strip()
    opts = dict(options or {})
    if "[" not in text:
        return registry.get(text).name, opts
    base, _, rest = text.partition("[")
    mode = rest[:-1].strip() if rest.endswith("]") else None
    spec = registry.get(base)
    if mode not in TREE_MODES:
        raise ConfigError(f"bad algorithm variant {text!r}: use NAME[static] or NAME[dynamic]")
    if not any(o.name == "tree" for o in spec.options):
        with_tree = [s.name for s in registry.specs() if any(o.name == "tree" for o in s.options)]
        raise ConfigError(
            f"algorithm {spec.name!r} has no tree modes; NAME[static|dynamic] works for {', '.join(with_tree)}"
        )
    opts["tree"] = mode
    return spec.name, opts


def variant_name(name: str, mode: str | None) -> str:
    return name if mode is None else f"{name}[{mode}]"


def parse_tree_modes(text: str | None) -> list[str] | None:
    """``--tree static,dynamic`` -> ["static", "dynamic"]; None/empty: no expansion."""
    if text is None or not str(text).strip():
        return None
    modes = []
    for m in str(text).split(","):
        m = m.strip()
        if not m:
            continue
        if m not in TREE_MODES:
            raise ConfigError(f"--tree takes static, dynamic or static,dynamic; got {m!r}")
        if m not in modes:
            modes.append(m)
    return modes or None


def _has_tree_option(name: str) -> bool:
    return any(o.name == "tree" for o in registry.get(name).options)


def parse_algorithms(spec: str | Sequence[str], tree_modes: Sequence[str] | None = None) -> list[str]:
    """Registered names (or NAME[static|dynamic] variants), deduplicated in order, with the
    AR baseline first. ``tree_modes`` expands every algorithm with a ``tree`` option into
    one variant per mode (e.g. racer -> racer[static], racer[dynamic])."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for item in items:
        if not str(item).strip():
            continue
        base, opts = split_variant(item)  # ConfigError listing the available ones
        if "tree" in opts:
            names = [variant_name(base, opts["tree"])]
        elif tree_modes and _has_tree_option(base):
            names = [variant_name(base, m) for m in tree_modes]
        else:
            names = [base]
        for name in names:
            if name not in out:
                out.append(name)
    if BASELINE in out:
        out.remove(BASELINE)
    return [BASELINE] + out


def parse_options(text: str | None, algorithms: Sequence[str]) -> dict[str, dict]:
    """``{"algo": {option: value}}`` (JSON string or file), validated against the registry."""
    data = registry.load_options(text)
    out: dict[str, dict] = {}
    bases = {split_variant(a)[0] for a in algorithms}
    for key, opts in data.items():
        name = registry.get(key).name
        if name not in bases:
            raise ConfigError(
                f"--options names algorithm {key!r}, which is not benchmarked; benchmarked: {', '.join(algorithms)}"
            )
        if not isinstance(opts, dict):
            raise ConfigError(
                f'--options: the options of {key!r} must be a JSON object, e.g. \'{{"{name}": {{"budget": 32}}}}\''
            )
        registry.validate_options(name, opts)
        out[name] = dict(opts)
    return out


def drafter_options(algorithm: str, options: Mapping[str, Mapping[str, Any]]) -> tuple[str, dict]:
    """(registered name, its options) of a benchmarked algorithm or variant."""
    base = split_variant(algorithm)[0]
    return split_variant(algorithm, options.get(base))


def resolve_budgets(algorithms: Sequence[str], budget: int | None) -> dict[str, int]:
    if budget is not None:
        budget = check_budget(budget)
    return {
        a: 1 if a == BASELINE else (budget if budget is not None else registry.get(split_variant(a)[0]).default_budget)
        for a in algorithms
    }


# ------------------------------------------------------------------ the loop
def _generate(engine, ids, drafter, budget, gen_config, policy=None):
    res = engine.generate([ids], drafter, budget, gen_config, budget_policy=policy if budget > 1 else None)
    if isinstance(res, (list, tuple)):
        res = res[0]
    return res


def _make_drafters(engine, algorithms, options):
    out = {}
    for a in algorithms:
        name, opts = drafter_options(a, options)
        out[a] = registry.create(name, engine.vocab_size, opts)
    return out


def _seed(seed: int | None, k: int):
    if seed is None:
        return
    import torch

    torch.manual_seed(seed + k)


def run_bench(
    engine,
    algorithms: Sequence[str],
    prompt_sets: Mapping[str, Sequence[Any]],
    *,
    max_new_tokens: int = 128,
    budget: int | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    warmup: int = 1,
    seed: int | None = 0,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seeds: int = 1,
    progress: bool = False,
    gen_config=None,
    calibration: bool = False,
    budget_policy=None,
    cost_model: Mapping[str, Any] | None = None,
) -> dict:
    """Benchmark ``algorithms`` (AR added first when missing) on ``prompt_sets``
    (label -> list of :class:`~specplug.prompts.Prompt`) and return the result dict
    (see the module docstring). ``gen_config`` overrides the GenerationConfig built
    from ``max_new_tokens``/``temperature``. ``calibration``: add each calibrating
    drafter's tables under the top-level key "calibration". ``budget_policy``: the
    load-aware policy of every speculative algorithm (None: fixed budgets), its cost model
    described by ``cost_model`` in the report. ``seeds`` > 1 (sampling only): every prompt
    is generated once per seed (``seed``, ``seed + 1``, ...); ``mat_by_seed`` and
    ``mat_spread`` (the sample standard deviation of the per-seed MATs) report the spread."""
    from specplug.prompts import encode_prompt

    algorithms = parse_algorithms(list(algorithms))
    options = {registry.get(k).name: dict(v) for k, v in (options or {}).items()}
    for a, o in options.items():
        registry.validate_options(a, o)
    for a in algorithms:
        registry.validate_options(*drafter_options(a, options))
    budgets = resolve_budgets(algorithms, budget)
    greedy = not (temperature and temperature > 0)
    if seeds < 1 or (seeds > 1 and greedy):
        raise ConfigError(f"seeds must be >= 1, and 1 for greedy decoding (temperature 0), got {seeds}")
    if gen_config is None:
        gen_configs = [
            make_generation_config(max_new_tokens, temperature, None if seed is None else seed + s, top_k, top_p)
            for s in range(seeds)
        ]
    else:
        gen_configs = [gen_config]
    gen_config = gen_configs[0]
    if not prompt_sets:
        raise ConfigError("no prompt sets to benchmark")

    encoded = {label: [(p.id, encode_prompt(engine, p)) for p in prompts] for label, prompts in prompt_sets.items()}

    # warm-up: first `warmup` prompts of the first set, every algorithm, discarded
    if warmup > 0:
        first = next(iter(encoded.values()))
        drafters = _make_drafters(engine, algorithms, options)
        for k, (_, ids) in enumerate(first[:warmup]):
            for a in algorithms:
                _seed(seed, k)
                _generate(engine, ids, drafters[a], budgets[a], gen_config, budget_policy)
        del drafters

    drafters = _make_drafters(engine, algorithms, options)
    # per (set, algorithm): list of per-prompt records
    records: dict[tuple[str, str], list[dict]] = {(s, a): [] for s in encoded for a in algorithms}
    total = sum(len(v) for v in encoded.values()) * len(algorithms) * len(gen_configs)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="bench", unit="gen", file=sys.stderr, dynamic_ncols=True)
    k = 0
    try:
        for label, items in encoded.items():
            for pid, ids in items:
                for s_index, config in enumerate(gen_configs):
                    r = k % len(algorithms)
                    order = list(algorithms[r:]) + list(algorithms[:r])
                    for a in order:
                        if bar is not None:
                            bar.set_postfix_str(f"{label} {pid} {a}", refresh=True)
                        _seed(seed, k)
                        t0 = time.perf_counter()
                        res = _generate(engine, ids, drafters[a], budgets[a], config, budget_policy)
                        wall = time.perf_counter() - t0
                        records[(label, a)].append(
                            {
                                "id": pid,
                                "seed_index": s_index,
                                "output_ids": list(res.output_ids),
                                "steps": int(res.steps),
                                "time_s": wall,
                                "draft_time_s": float(res.draft_time_s),
                                "verify_time_s": float(res.verify_time_s),
                                "speculative_steps": int(getattr(res, "speculative_steps", 0)),
                            }
                        )
                        if bar is not None:
                            bar.update(1)
                    k += 1
    finally:
        if bar is not None:
            bar.close()

    results = []
    for label in encoded:
        base = records[(label, BASELINE)]
        base_tokens = sum(len(x["output_ids"]) for x in base)
        base_time = sum(x["time_s"] for x in base)
        base_tps = base_tokens / base_time if base_time > 0 else 0.0
        for a in algorithms:
            rec = records[(label, a)]
            new_tokens = sum(len(x["output_ids"]) for x in rec)
            steps = sum(x["steps"] for x in rec)
            time_s = sum(x["time_s"] for x in rec)
            tps = new_tokens / time_s if time_s > 0 else 0.0
            per_prompt = []
            for x, b in zip(rec, base):
                if x["time_s"] > 0 and b["time_s"] > 0 and b["output_ids"]:
                    per_prompt.append((len(x["output_ids"]) / x["time_s"]) / (len(b["output_ids"]) / b["time_s"]))
            mismatches = sum(x["output_ids"] != b["output_ids"] for x, b in zip(rec, base)) if greedy else None
            results.append(
                {
                    "algorithm": a,
                    "prompt_set": label,
                    "prompts": len(rec) // len(gen_configs),
                    "new_tokens": int(new_tokens),
                    "steps": int(steps),
                    "mat": float(new_tokens / steps) if steps else 0.0,
                    "tokens_per_s": float(tps),
                    "speedup_vs_ar": float(tps / base_tps) if base_tps > 0 else 0.0,
                    "draft_ms_per_step": float(1000.0 * sum(x["draft_time_s"] for x in rec) / steps) if steps else 0.0,
                    "lossless_mismatches": mismatches,
                    # extras
                    "budget": budgets[a],
                    "median_speedup_vs_ar": float(statistics.median(per_prompt)) if per_prompt else 0.0,
                    "verify_ms_per_step": float(1000.0 * sum(x["verify_time_s"] for x in rec) / steps)
                    if steps
                    else 0.0,
                    "time_s": float(time_s),
                    "speculative_step_share": float(
                        sum(x["speculative_steps"] for x in rec) / max(steps - len(rec), 1)
                    ),
                    "mismatched_prompts": (
                        [x["id"] for x, b in zip(rec, base) if x["output_ids"] != b["output_ids"]] if greedy else None
                    ),
                    **_seed_spread(rec, len(gen_configs)),
                }
            )

    import torch

    report = {
        "model": str(_engine_attr(engine, ("model_name", "model_path", "name"), "unknown")),
        "device": str(_engine_attr(engine, ("device",), "cpu")),
        "dtype": _dtype_label(engine),
        "torch_threads": int(torch.get_num_threads()),
        "results": results,
        "config": {
            "algorithms": list(algorithms),
            "budgets": budgets,
            "budget_policy": "fixed" if budget_policy is None else "load-aware",
            "cost_model": dict(cost_model or {}),
            "options": options,
            "max_new_tokens": int(max_new_tokens),
            "warmup": int(warmup),
            "seed": seed,
            "seeds": int(len(gen_configs)),
            "temperature": float(temperature),
            "top_k": int(top_k),
            "top_p": float(top_p),
            "order": "interleaved, rotated per prompt",
            "timing": "wall time of engine.generate per prompt, summed",
        },
    }
    reports = {a: r for a, r in ((a, d.bench_report()) for a, d in drafters.items()) if r is not None}
    if reports:  # drafters that report their own decisions (del: exit layer and γ over time)
        report["drafter_reports"] = reports
    if calibration:  # an extra top-level key, only on request
        report["calibration"] = {
            a: r for a, r in ((a, d.calibration_report()) for a, d in drafters.items()) if r is not None
        }
    return report


def _seed_spread(rec: list[dict], seeds: int) -> dict:
    """MAT per seed (tokens / steps over the set's prompts at that seed) and its sample
    standard deviation; empty for one seed."""
    if seeds < 2:
        return {}
    mats = []
    for s in range(seeds):
        at = [x for x in rec if x["seed_index"] == s]
        steps = sum(x["steps"] for x in at)
        mats.append(sum(len(x["output_ids"]) for x in at) / steps if steps else 0.0)
    return {"seeds": seeds, "mat_by_seed": mats, "mat_spread": float(statistics.stdev(mats))}


def _dtype_label(engine) -> str | None:
    """bf16 / fp32, with the kernels where they are the batch-invariant ones."""
    dtype = getattr(engine, "dtype", None)
    if dtype is None:
        return None
    from specplug.adapters.hf.invariant import is_invariant
    from specplug.adapters.hf.precision import dtype_label

    model = getattr(engine, "model", None)
    invariant = model is not None and hasattr(model, "config") and is_invariant(model)
    return dtype_label(dtype) + (" (batch-invariant kernels)" if invariant else "")


def _engine_attr(engine, names, default):
    for n in names:
        v = getattr(engine, n, None)
        if v is not None and v != "":
            return v
    return default


def make_generation_config(
    max_new_tokens: int, temperature: float = 0.0, seed: int | None = 0, top_k: int = 0, top_p: float = 1.0
):
    """The engine's GenerationConfig for this run (greedy unless temperature > 0)."""
    import dataclasses

    from specplug.adapters.hf.engine import GenerationConfig

    kwargs: dict[str, Any] = {"max_new_tokens": int(max_new_tokens)}
    if temperature and temperature > 0:
        from specplug.adapters.hf.engine import SamplingConfig

        fields = (
            {f.name for f in dataclasses.fields(SamplingConfig)} if dataclasses.is_dataclass(SamplingConfig) else set()
        )
        skw: dict[str, Any] = {"temperature": float(temperature), "top_k": int(top_k), "top_p": float(top_p)}
        if "seed" in fields and seed is not None:
            skw["seed"] = int(seed)
        kwargs["sampling"] = SamplingConfig(**skw)
    return GenerationConfig(**kwargs)


# ------------------------------------------------------------------ output
def _fmt_int(v):
    return f"{v:,}" if isinstance(v, int) else "-"


def format_table(report: dict, markdown: bool = False) -> str:
    cols = [
        "algorithm",
        "prompt set",
        "n",
        "budget",
        "new tok",
        "steps",
        "MAT",
        "spec steps",
        "tok/s",
        "speedup",
        "median",
        "draft ms/step",
        "mismatches",
    ]
    rows = []
    for r in report["results"]:
        mm = r["lossless_mismatches"]
        rows.append(
            [
                r["algorithm"],
                r["prompt_set"],
                str(r["prompts"]),
                str(r.get("budget", "")),
                _fmt_int(r["new_tokens"]),
                _fmt_int(r["steps"]),
                f"{r['mat']:.2f}" + (f" ±{r['mat_spread']:.2f}" if "mat_spread" in r else ""),
                f"{100 * r.get('speculative_step_share', 0.0):.0f}%",
                f"{r['tokens_per_s']:.1f}",
                f"{r['speedup_vs_ar']:.2f}x",
                f"{r.get('median_speedup_vs_ar', float('nan')):.2f}x",
                f"{r['draft_ms_per_step']:.3f}",
                "n/a" if mm is None else str(mm),
            ]
        )
    dtype = f" {report['dtype']}" if report.get("dtype") else ""
    head = f"model {report['model']} on {report['device']}{dtype}, {report['torch_threads']} torch thread(s)"
    cfg = report.get("config", {})
    if cfg.get("budget_policy") == "load-aware":
        cm = cfg.get("cost_model") or {}
        head += f"; load-aware budgets (cost model: {cm.get('source', '?')} {cm.get('path') or cm.get('name', '')})"
    elif cfg.get("budget_policy") == "fixed":
        head += "; fixed budgets"
    if markdown:
        lines = [
            f"{head}",
            "",
            "| " + " | ".join(cols) + " |",
            "|" + "|".join("---" if i < 2 else "---:" for i in range(len(cols))) + "|",
        ]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines) + "\n"
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)]

    def line(cells):
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    out = [head, line(cols), "  ".join("-" * w for w in widths)] + [line(r) for r in rows]
    return "\n".join(out) + "\n"


def format_calibration(report: dict) -> str:
    """Expected vs realised accepted draft tokens per step, and the edge calibration of
    rank-0/1 candidates (hit rate vs the target's probability), per drafter that keeps one."""
    cal = report.get("calibration") or {}
    out = []
    for a, c in cal.items():
        ln = c["length"]
        out.append(
            f"calibration of {a}: {ln['steps']} steps, expected {ln['mean_expected']:.3f} vs realised "
            f"{ln['mean_realised']:.3f} accepted draft tokens per step (ratio {ln['global_ratio']:.3f})"
        )
        out.append("  expected-length bin    steps  mean expected  mean realised")
        for b in ln["bins"]:
            out.append(
                f"  {b['expected_bin']:<20} {b['steps']:>7} {b['mean_expected']:>14.3f} {b['mean_realised']:>14.3f}"
            )
        for key in ("token_rows", "pair_rows"):
            rows = [r for r in c.get(key, []) if r["rank"] <= 1]
            if not rows:
                continue
            out.append(f"  edges ({key}): rank  prob bin     trials  hit rate  estimate")
            for r in rows:
                out.append(
                    f"  {'':>18}{r['rank']:>4}  {r['prob_bin']:<11} {r['trials']:>7} {r['hit_rate']:>9.3f} "
                    f"{r['estimate']:>9.3f}"
                )
        acc = [
            r
            for r in c.get("acceptance", [])
            if r["source"].startswith("retrieval") or r["source"].endswith((" 0", " 1"))
        ]  # every retrieval class, ranks 0-1
        if acc:
            out.append(
                "  accepted edges (dynamic trees): source               regime          prob bin     trials  "
                "accept rate  prior  estimate"
            )
            for r in acc:
                out.append(
                    f"  {'':>32}{r['source']:<24} {r.get('regime', 'greedy'):<15} {r['prob_bin']:<11} "
                    f"{r['trials']:>7} {r['accept_rate']:>11.3f} {r['prior']:>6.3f} {r['estimate']:>9.3f}"
                )
    return "\n".join(out) + ("\n" if out else "")


def _md_path(json_path: str) -> str:
    root, ext = os.path.splitext(json_path)
    return (root if ext.lower() == ".json" else json_path) + ".md"


def _check_json(report: dict) -> None:
    """Replace NaN/inf (not JSON) by 0.0 so the file always parses."""
    for r in report["results"]:
        for k, v in r.items():
            if isinstance(v, float) and not math.isfinite(v):
                r[k] = 0.0


# ------------------------------------------------------------------ CLI
def _int_at_least(low: int, what: str):
    """argparse type: an integer >= low, else one clear error."""

    def parse(text: str) -> int:
        import argparse

        try:
            v = int(text)
        except ValueError:
            v = low - 1
        if v < low:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return v

    return parse


_positive_int = _int_at_least(1, "a positive integer")
_nonneg_int = _int_at_least(0, "an integer >= 0")


def add_arguments(p):
    p.add_argument(
        "--model",
        default=None,
        help="model path or name for the embedded engine (default: the engine's default, SmolLM2-135M)",
    )
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument(
        "--dtype",
        choices=DTYPE_CHOICES,
        default="auto",
        help="model dtype: auto (default: bf16 on a CPU with native bf16, e.g. AVX512-BF16 or AMX, else fp32), bf16 or fp32",
    )
    p.add_argument(
        "--algorithms",
        default="ar,pld",
        help="comma-separated registered algorithms (see `specplug algorithms`); "
        "ar, the baseline, is always included (default: ar,pld)",
    )
    p.add_argument(
        "--prompts",
        default=DEFAULT_PROMPTS,
        help="comma-separated prompt sets: humaneval, mtbench, gsm8k, or paths to JSONL files "
        "with a 'prompt' or 'messages' field per line (default: %(default)s)",
    )
    p.add_argument("--limit", type=_positive_int, default=10, help="first N prompts of each set (default: 10)")
    p.add_argument("--max-new-tokens", type=_positive_int, default=128, help="tokens per prompt (default: 128)")
    p.add_argument(
        "--budget",
        type=int,
        default=None,
        help="tree budget cap (nodes incl. root, 1..1024) for every speculative algorithm "
        "(default: each algorithm's default budget; ar always uses 1); with --fixed-budget "
        "every tree is verified at it",
    )
    policy_args.add_arguments(p)
    p.add_argument(
        "--options",
        default=None,
        help='per-algorithm options as JSON or a JSON file, e.g. \'{"pld": {"max_ngram": 4}}\'',
    )
    p.add_argument(
        "--tree",
        default=None,
        metavar="MODES",
        help="tree modes of algorithms that have them (racer, token-recycling): static, dynamic "
        "or static,dynamic to compare both in one run; rows are then named e.g. racer[dynamic] "
        "(default: each algorithm's own option). NAME[MODE] in --algorithms also works",
    )
    p.add_argument("--threads", type=_positive_int, default=1, help="torch CPU threads (default: 1)")
    p.add_argument(
        "--warmup",
        type=_nonneg_int,
        default=1,
        help="warm-up prompts per algorithm before measuring, discarded (default: 1)",
    )
    p.add_argument(
        "--temperature",
        type=float,
        default=0.0,
        help="0 = greedy (default; lossless check on); > 0 samples (mismatches not counted)",
    )
    p.add_argument("--top-k", type=_nonneg_int, default=0, help="sampling: keep the k most likely tokens (0 = off)")
    p.add_argument("--top-p", type=float, default=1.0, help="sampling: nucleus mass in (0, 1] (1 = off)")
    p.add_argument("--seed", type=int, default=0, help="torch seed, offset per prompt (default: 0)")
    p.add_argument(
        "--seeds",
        type=_positive_int,
        default=1,
        help="sampling: generate every prompt with seeds SEED .. SEED+N-1; MAT is reported "
        "with the standard deviation of the per-seed MATs (default: 1)",
    )
    p.add_argument(
        "--json",
        default=None,
        metavar="PATH",
        help="write the results as JSON to PATH and a Markdown table to PATH with .md",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument(
        "--calibration",
        action="store_true",
        help="also report the calibration tables of drafters that keep one (racer, token-recycling): "
        "expected vs realised accepted tokens, hit rate per candidate probability bin "
        "(printed, and stored in the JSON under 'calibration')",
    )


def run(args) -> int:
    from specplug.prompts import load_prompt_set, prompt_set_label

    # everything checkable is checked before the model loads
    algorithms = parse_algorithms(args.algorithms, parse_tree_modes(getattr(args, "tree", None)))
    options = parse_options(args.options, algorithms)
    for a in algorithms:
        registry.validate_options(*drafter_options(a, options))
    resolve_budgets(algorithms, args.budget)
    policy_args.check(args)
    from specplug.drafters.sampling import check_sampling

    check_sampling(args.temperature, args.top_k, args.top_p)
    if args.seeds > 1 and args.temperature == 0:
        raise ConfigError("--seeds > 1 needs sampling (--temperature > 0): greedy output does not depend on the seed")
    names = [s.strip() for s in str(args.prompts).split(",") if s.strip()]
    if not names:
        raise ConfigError("--prompts is empty; use e.g. humaneval,mtbench,gsm8k")
    prompt_sets: dict[str, list] = {}
    for n in names:
        label = prompt_set_label(n)
        if label in prompt_sets:
            raise ConfigError(f"prompt set {label!r} given twice")
        prompt_sets[label] = load_prompt_set(n, limit=args.limit)
    if args.json:
        d = os.path.dirname(os.path.abspath(args.json))
        if not os.path.isdir(d):
            raise ConfigError(f"--json: directory {d} does not exist")

    import torch

    torch.set_num_threads(args.threads)
    from specplug.adapters.hf.engine import HFEngine

    engine = HFEngine.load(model_path=args.model, device=args.device, dtype=args.dtype)
    choice = policy_args.choose(engine, args)
    print(f"budgets: {choice.label}", file=sys.stderr)

    report = run_bench(
        engine,
        algorithms,
        prompt_sets,
        max_new_tokens=args.max_new_tokens,
        budget=args.budget,
        options=options,
        warmup=args.warmup,
        seed=args.seed,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seeds=args.seeds,
        progress=not args.no_progress,
        calibration=args.calibration,
        budget_policy=choice.policy,
        cost_model=choice.description,
    )
    if args.model and report["model"] == "unknown":
        report["model"] = args.model
    report["config"]["limit"] = args.limit
    report["config"]["prompts"] = names
    _check_json(report)
    sys.stdout.write(format_table(report))
    if args.calibration:
        sys.stdout.write(format_calibration(report))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
        with open(_md_path(args.json), "w", encoding="utf-8") as f:
            f.write(format_table(report, markdown=True))
            if args.calibration:
                f.write("\n```\n" + format_calibration(report) + "```\n")
        print(f"wrote {args.json} and {_md_path(args.json)}", file=sys.stderr)
    return 0
