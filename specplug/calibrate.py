"""``specplug calibrate``: measure the embedded engine's verify cost model explicitly.

``specplug generate`` and ``specplug bench`` measure it by themselves at first use (and
cache it, keyed by model, device, dtype, threads and versions); this command re-measures
it on demand: the time of one verify pass (tree-attention forward over ``--context``
cached slots per row, argmax and top-8, as in a verify step) for each batch size x width
of the grid, the median of ``--repeats`` passes after one warm-up. By default it replaces
the cached entry the policy reads; ``--out`` writes the JSON elsewhere instead (e.g. the
package's fallback ``drafters/cost_models/cpu.json``). A PNG of the curves (seconds vs
tokens per row, one line per batch size) is drawn beside the JSON when matplotlib is there.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys

from specplug.adapters.hf.precision import DTYPE_CHOICES
from specplug.drafters.errors import ConfigError


def _ints(text: str, what: str) -> list[int]:
    try:
        vals = sorted({int(x) for x in str(text).split(",") if x.strip()})
    except ValueError:
        raise ConfigError(f"{what}: comma-separated positive integers please, got {text!r}") from None
    if len(vals) < 1 or vals[0] < 1:
        raise ConfigError(f"{what}: comma-separated positive integers please, got {text!r}")
    return vals


def add_arguments(p):
    from specplug.adapters.hf import cost

    p.add_argument("--model", default=None, help="model path (default: the engine's default, SmolLM2-135M)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument(
        "--dtype",
        choices=DTYPE_CHOICES,
        default="auto",
        help="model dtype: auto (default: bf16 on a CPU with native bf16, e.g. AVX512-BF16 or AMX, else fp32), bf16 or fp32",
    )
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    p.add_argument(
        "--batches", default=",".join(map(str, cost.GRID_BATCHES)), help="batch sizes (default: %(default)s)"
    )
    p.add_argument(
        "--widths", default=",".join(map(str, cost.GRID_WIDTHS)), help="tokens per row (default: %(default)s)"
    )
    p.add_argument(
        "--max-tokens", type=int, default=cost.MAX_TOKENS, help="largest batch x width (default: %(default)s)"
    )
    p.add_argument("--context", type=int, default=cost.CONTEXT, help="cached tokens per row (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=2, help="timed passes per point (median; default: 2)")
    p.add_argument("--out", default=None, help="output JSON (default: replace the cached cost model the policy reads)")


def run(args) -> int:
    from specplug.adapters.hf import cost

    batches, widths = _ints(args.batches, "--batches"), _ints(args.widths, "--widths")
    if len(widths) < 2 or args.max_tokens < 2 or args.context < 1 or args.repeats < 1 or args.threads < 1:
        raise ConfigError("two or more --widths, --max-tokens >= 2, --context, --repeats and --threads >= 1 please")
    default_grid = (
        tuple(batches) == cost.GRID_BATCHES
        and tuple(widths) == cost.GRID_WIDTHS
        and args.max_tokens == cost.MAX_TOKENS
        and args.context == cost.CONTEXT
    )
    if args.out is None and not default_grid:
        raise ConfigError("a grid other than the default is not what the policy reads: give --out PATH")
    import torch

    torch.set_num_threads(args.threads)
    from specplug.adapters.hf.engine import HFEngine

    engine = HFEngine.load(model_path=args.model, device=args.device, dtype=args.dtype)

    def show(p):
        print(f"batch {p['batch']:>3} x width {p['width']:>4}: {1000 * p['seconds']:9.2f} ms", flush=True)

    if args.out is None:
        cached = cost.engine_cost_model(engine, refresh=True, progress=show)
        out, points = cached.path, cached.model.points()
        print(f"measured in {cached.measure_s:.1f} s", file=sys.stderr)
    else:
        points = cost.measure_grid(
            engine,
            batches,
            widths,
            context=args.context,
            repeats=args.repeats,
            max_tokens=args.max_tokens,
            progress=show,
        )
        out = args.out
        data = {
            "device": str(args.device),
            "cpu": platform.processor() or platform.machine(),
            "model": str(getattr(engine, "model_name", None) or args.model or "default"),
            "torch_threads": int(torch.get_num_threads()),
            "key": cost.cost_key(engine),
            "context_per_row": args.context,
            "repeats": args.repeats,
            "date": datetime.date.today().isoformat(),
            "command": "specplug calibrate " + " ".join(sys.argv[2:]),
            "extrapolation": "linear beyond the last point, with the last segment's slope",
            "points": points,
        }
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
    print(f"wrote {out}", file=sys.stderr)
    from specplug.plots import cost_curve_png

    png = os.path.splitext(out)[0] + ".png"
    if cost_curve_png(points, png):
        print(f"wrote {png}", file=sys.stderr)
    return 0
