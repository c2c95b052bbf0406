"""``specplug calibrate``: measure the embedded engine's verify cost model explicitly.

``specplug generate`` and ``specplug bench`` measure it by themselves at first use (and
cache it, keyed by model, device, dtype, threads and versions); this command re-measures
it on demand: the time of one verify pass (tree-attention forward over ``--context``
cached slots per row, argmax and top-8, as in a verify step) for each batch size x width
of the grid, the median of ``--repeats`` passes after one warm-up. By default it replaces
the cached entry the policy reads; ``--out`` writes the JSON elsewhere instead (e.g. the
package's fallback ``drafters/cost_models/cpu.json``). A PNG of the curves (seconds vs
tokens per row, one line per batch size) is drawn beside the JSON when matplotlib is there.

``--device cuda`` measures a GPU: its grid defaults to batch 1..64 x 1..512 tokens per row
(``cost.GPU_GRID_*``), bf16 and fp32 run on transformers' own kernels (the batch-invariant
ones are CPU kernels; timing does not need them), and every pass is timed between
``torch.cuda.synchronize`` calls. ``--random-weights SHAPE`` times a random-weight model of
a published shape built in memory (:mod:`specplug.adapters.hf.shapes`) where no checkpoint
is at hand: the time depends on the shapes, not on the weights.
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
    from specplug.adapters.hf.shapes import SHAPES

    def grid(cpu, gpu):
        return f"{','.join(map(str, cpu))} on a CPU, {','.join(map(str, gpu))} on CUDA"

    p.add_argument("--model", default=None, help="model path (default: the engine's default, SmolLM2-135M)")
    p.add_argument(
        "--random-weights",
        choices=sorted(SHAPES),
        default=None,
        metavar="SHAPE",
        help=f"time a random-weight model of this shape built in memory instead of --model: {', '.join(SHAPES)}",
    )
    p.add_argument("--device", default="cpu", help="torch device: cpu (default) or cuda")
    p.add_argument(
        "--dtype",
        choices=DTYPE_CHOICES,
        default="auto",
        help="model dtype: auto (default: bf16 on a CPU with native bf16, e.g. AVX512-BF16 or AMX, else fp32), bf16 or fp32",
    )
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    p.add_argument(
        "--batches",
        default=None,
        help=f"batch sizes (default: {grid(cost.GRID_BATCHES, cost.GPU_GRID_BATCHES)})",
    )
    p.add_argument(
        "--widths",
        default=None,
        help=f"tokens per row (default: {grid(cost.GRID_WIDTHS, cost.GPU_GRID_WIDTHS)})",
    )
    p.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        help=f"largest batch x width (default: {cost.MAX_TOKENS} on a CPU, {cost.GPU_MAX_TOKENS} on CUDA)",
    )
    p.add_argument("--context", type=int, default=cost.CONTEXT, help="cached tokens per row (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=2, help="timed passes per point (median; default: 2)")
    p.add_argument("--out", default=None, help="output JSON (default: replace the cached cost model the policy reads)")


def _device(name: str):
    import torch

    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {name!r}; use 'cpu' or 'cuda'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' asked for, but torch sees no CUDA GPU; use --device cpu")
    return dev


def _grid(args, on_gpu: bool) -> tuple[list[int], list[int], int]:
    """--batches, --widths and --max-tokens, with the device's defaults for those not given."""
    from specplug.adapters.hf import cost

    batches = args.batches or ",".join(map(str, cost.GPU_GRID_BATCHES if on_gpu else cost.GRID_BATCHES))
    widths = args.widths or ",".join(map(str, cost.GPU_GRID_WIDTHS if on_gpu else cost.GRID_WIDTHS))
    max_tokens = args.max_tokens
    if max_tokens is None:
        max_tokens = cost.GPU_MAX_TOKENS if on_gpu else cost.MAX_TOKENS
    return _ints(batches, "--batches"), _ints(widths, "--widths"), int(max_tokens)


def _load_engine(args, dev):
    """The engine to time. The CPU with a model path (or none) loads as ``generate`` does;
    a GPU or a random-weight model keeps transformers' kernels where the batch-invariant
    ones do not apply (they are CPU kernels; a timing needs no token identity)."""
    import torch

    from specplug.adapters.hf.engine import DEFAULT_MODEL_NAME, HFEngine

    if dev.type == "cpu" and args.random_weights is None:
        return HFEngine.load(model_path=args.model, device=args.device, dtype=args.dtype)
    from specplug.adapters.hf.invariant import invariant_supported, make_invariant
    from specplug.adapters.hf.precision import resolve_dtype

    want = resolve_dtype(args.dtype, str(dev))
    if args.random_weights is not None:
        from specplug.adapters.hf.shapes import random_model

        model, tokenizer = random_model(args.random_weights, want, str(dev)), None
        name = f"random-weights:{args.random_weights}"
    else:
        from specplug.adapters.hf.models import load_model

        model, tokenizer = load_model(args.model, dtype=want)
        model.to(dev)
        name = str(args.model) if args.model else DEFAULT_MODEL_NAME
    if want in (torch.bfloat16, torch.float16) and invariant_supported(model) is None:
        make_invariant(model)  # what the embedded engine runs in bf16 on this CPU
    return HFEngine(model, tokenizer, eos_token_ids=[] if tokenizer is None else None, model_name=name)


def run(args) -> int:
    from specplug.adapters.hf import cost

    dev = _device(args.device)
    batches, widths, max_tokens = _grid(args, dev.type == "cuda")
    if len(widths) < 2 or max_tokens < 2 or args.context < 1 or args.repeats < 1 or args.threads < 1:
        raise ConfigError("two or more --widths, --max-tokens >= 2, --context, --repeats and --threads >= 1 please")
    default_grid = (
        tuple(batches) == cost.GRID_BATCHES
        and tuple(widths) == cost.GRID_WIDTHS
        and max_tokens == cost.MAX_TOKENS
        and args.context == cost.CONTEXT
    )
    if args.out is None and not default_grid:
        gpu = " (on CUDA the grid defaults to batch 1..64 x 1..512 tokens)" if dev.type == "cuda" else ""
        raise ConfigError(f"a grid other than the default{gpu} is not what the policy reads: give --out PATH")
    if args.model is not None and args.random_weights is not None:
        raise ConfigError("--model or --random-weights, not both")
    if args.out is None and args.random_weights is not None:
        raise ConfigError("a random-weight model's cost is not what the policy reads: give --out PATH")
    import torch

    torch.set_num_threads(args.threads)
    engine = _load_engine(args, dev)

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
            max_tokens=max_tokens,
            progress=show,
        )
        out, key = args.out, cost.cost_key(engine)
        data = {
            "device": str(args.device),
            "device_name": key["device_name"],
            "cpu": platform.processor() or platform.machine(),
            "model": str(getattr(engine, "model_name", None) or args.model or "default"),
            "torch_threads": int(torch.get_num_threads()),
            "key": key,
            "grid": {"batches": batches, "widths": widths, "max_tokens": max_tokens},
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
