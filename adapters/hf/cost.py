"""The embedded engine's verify cost, measured on the model, device, dtype and threads it runs.

:func:`measure_grid` times the engine's own verify pass (tree-attention forward over a KV
cache, argmax, top-k, as in :class:`~.decode.DecodeBatch`) for ``batch x width`` draft
tokens; :func:`engine_cost_model` measures it once per setup and caches it on disk
(:mod:`specplug.drafters.cost_cache`), so the load-aware policy prices trees with this
machine's numbers rather than the shipped ``cost_models/cpu.json``.
"""

from __future__ import annotations

import importlib.metadata
import platform
import time
from collections.abc import Sequence

import numpy as np
import torch

from specplug.drafters.cost_cache import CachedCost, cached_cost_model

from .invariant import is_invariant, new_cache, tree_pass_mask
from .kv import cache_kwarg

__all__ = [
    "measure_grid",
    "engine_cost_model",
    "cost_key",
    "GRID_BATCHES",
    "GRID_WIDTHS",
    "GPU_GRID_BATCHES",
    "GPU_GRID_WIDTHS",
    "GPU_MAX_TOKENS",
]

#: the first-use grid: batch sizes x tokens per row (widths), pairs above MAX_TOKENS skipped
GRID_BATCHES = (1, 4, 16)
GRID_WIDTHS = (1, 2, 4, 8, 16, 32, 64)
MAX_TOKENS = 64
#: committed KV slots per row while timing (a prompt plus some output)
CONTEXT = 256
#: ``specplug calibrate --device cuda``'s grid: a GPU's curve stays flat far longer, so it
#: is measured up to 512 tokens per pass and batch 64 (49 points)
GPU_GRID_BATCHES = (1, 2, 4, 8, 16, 32, 64)
GPU_GRID_WIDTHS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
GPU_MAX_TOKENS = 512


def measure_grid(
    engine,
    batches: Sequence[int] = GRID_BATCHES,
    widths: Sequence[int] = GRID_WIDTHS,
    *,
    context: int = CONTEXT,
    repeats: int = 2,
    max_tokens: int = MAX_TOKENS,
    topk: int = 8,
    progress=None,
) -> list[dict]:
    """Median seconds of ``repeats`` verify passes (after one warm-up) per (batch, width)
    with ``batch * width <= max_tokens``; each batch size gets at least two widths."""
    model = engine.model
    p = next(model.parameters())
    dev, dtype = p.device, p.dtype
    points = []
    with torch.inference_mode():
        for b in batches:
            row = [w for w in widths if b * w <= max_tokens]
            for w in row if len(row) >= 2 else list(widths[:2]):
                sec = _time_pass(model, engine.vocab_size, dev, dtype, b, w, context, repeats, topk)
                points.append({"tokens": int(b * w), "batch": int(b), "width": int(w), "seconds": sec})
                if progress is not None:
                    progress(points[-1])
    return points


def _time_pass(model, vocab, dev, dtype, b, w, context, repeats, topk) -> float:
    cache = new_cache(model, b, context + w)  # zeros: contents do not change the time
    cache.end = context
    lens = np.full(b, context, np.int64)
    chain = np.broadcast_to(np.tril(np.ones((w, w), bool))[None], (b, w, w))
    pos = torch.arange(context, context + w, device=dev)[None].expand(b, -1)
    ids = torch.randint(0, vocab, (b, w), generator=torch.Generator().manual_seed(b * 1000 + w)).to(dev)
    times = []
    for rep in range(repeats + 1):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        mask = tree_pass_mask(cache, lens, chain, dtype, dev)  # the engine builds it every step too
        logits = model(
            input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **{cache_kwarg(model): cache}
        ).logits
        logits.argmax(dim=-1).cpu()
        torch.topk(logits, topk, dim=-1).indices.cpu()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        cache.end = context  # the next pass overwrites the same slots
        if rep:
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def cost_key(engine) -> dict:
    """What the embedded engine's verify time depends on."""
    cfg = engine.model.config
    arch = {
        k: getattr(cfg, k, None)
        for k in ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    }
    return {
        "engine": "embedded",
        "model": str(engine.model_name),
        "architecture": arch,
        "vocab_size": int(engine.vocab_size),
        "device": str(engine.device),
        "device_name": _device_name(engine.device),
        "dtype": str(engine.dtype).replace("torch.", ""),
        "kernels": "batch-invariant" if is_invariant(engine.model) else "library",
        "threads": int(torch.get_num_threads()),
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "grid": {"batches": list(GRID_BATCHES), "widths": list(GRID_WIDTHS), "max_tokens": MAX_TOKENS},
        "context": CONTEXT,
    }


def engine_cost_model(engine, *, refresh: bool = False, progress=None) -> CachedCost:
    """This engine's cost model: from the cache, else measured now (seconds) and cached."""
    return cached_cost_model(cost_key(engine), lambda: measure_grid(engine, progress=progress), refresh=refresh)


def _device_name(device: str) -> str:
    if str(device).startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
