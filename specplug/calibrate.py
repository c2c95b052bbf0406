"""``specplug calibrate``: measure the verify cost model (time of one forward pass vs total
tokens in the batch) on the embedded engine, for the load-aware budget policy.

For each total token count T (powers of two up to ``--max-tokens``) the batch holds
``b = min(T, --max-batch)`` rows of ``T / b`` draft tokens each (a chain mask), over
``--context`` committed KV slots per row, through the engine's own tree-attention path
(TreeKVCache, 4D mask) plus argmax and top-8 as in a verify step; the time is the median
of ``--repeats`` passes after one warm-up pass. Written as JSON (default: the
package's ``drafters/cost_models/<device>.json``, which :func:`budget.default_cost_model`
reads) with the device, model, thread count and date.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
import time

from specplug.drafters.errors import ConfigError


def add_arguments(p):
    p.add_argument("--model", default=None, help="model path (default: the engine's default, SmolLM2-135M)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    p.add_argument("--max-tokens", type=int, default=512, help="largest total tokens per pass (default: 512)")
    p.add_argument("--max-batch", type=int, default=16, help="most rows per pass (default: 16)")
    p.add_argument("--context", type=int, default=128, help="cached tokens per row (default: 128)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes per point (median; default: 3)")
    p.add_argument("--out", default=None, help="output JSON (default: the package's cost_models/<device>.json)")


def measure(engine, totals, max_batch: int, context: int, repeats: int):
    """Median time of the engine's verify pass (tree-attention forward over a KV cache of
    ``context`` slots per row, then argmax and top-8) per total token count."""
    import numpy as np
    import torch

    from specplug.adapters.hf.kv import TreeKVCache, cache_kwarg, tree_attention_mask

    model = engine.model
    p = next(model.parameters())
    dev, dtype = p.device, p.dtype
    points = []
    for total in totals:
        b = min(total, max_batch)
        w = total // b
        cache = TreeKVCache.for_model(model, b, context + w)  # zeros: contents do not change the time
        cache.end = context
        lens = torch.full((b,), context, dtype=torch.long, device=dev)
        chain = torch.tril(torch.ones((w, w), dtype=torch.bool, device=dev))[None].expand(b, -1, -1)
        mask = tree_attention_mask(lens, context, chain, dtype)
        pos = torch.arange(context, context + w, device=dev)[None].expand(b, -1)
        gen = torch.Generator().manual_seed(total)
        ids = torch.randint(0, engine.vocab_size, (b, w), generator=gen).to(dev)
        times = []
        with torch.inference_mode():
            for rep in range(repeats + 1):
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                logits = model(
                    input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **{cache_kwarg(model): cache}
                ).logits
                logits.argmax(dim=-1).cpu()
                torch.topk(logits, 8, dim=-1).indices.cpu()
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                if rep:
                    times.append(time.perf_counter() - t0)
        sec = float(np.median(times))
        points.append({"tokens": int(b * w), "batch": int(b), "width": int(w), "seconds": sec})
        print(f"tokens {b * w:>6} (batch {b:>3} x width {w:>4}): {1000 * sec:9.2f} ms", flush=True)
    return points


def run(args) -> int:
    if args.max_tokens < 2 or args.max_batch < 1 or args.context < 1 or args.repeats < 1 or args.threads < 1:
        raise ConfigError("--max-tokens >= 2, --max-batch, --context, --repeats and --threads >= 1 please")
    import torch

    torch.set_num_threads(args.threads)
    from specplug.adapters.hf.engine import HFEngine
    from specplug.drafters.budget import COST_MODEL_DIR

    engine = HFEngine.load(model_path=args.model, device=args.device)
    totals = []
    t = 1
    while t <= args.max_tokens:
        totals.append(t)
        t *= 2
    points = measure(engine, totals, args.max_batch, args.context, args.repeats)
    out = args.out or os.path.join(COST_MODEL_DIR, f"{str(args.device).split(':')[0]}.json")
    data = {
        "device": str(args.device),
        "cpu": platform.processor() or platform.machine(),
        "model": str(getattr(engine, "model_name", None) or args.model or "default"),
        "torch_threads": int(torch.get_num_threads()),
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
    return 0
