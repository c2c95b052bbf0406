"""The embedded engine's dtype: bf16 where this CPU computes it natively, fp32 elsewhere.

bf16 halves the bytes each verify pass streams and, on CPUs with bf16 dot-product
instructions (AVX512-BF16, AMX-BF16), runs at close to memory speed; without them torch
emulates it and fp32 is faster. The flags are read from the CPU, not guessed.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from specplug.drafters.errors import ConfigError

if TYPE_CHECKING:
    import torch

__all__ = ["DTYPE_CHOICES", "cpu_bf16_flags", "resolve_dtype", "dtype_label"]

#: the ``--dtype`` values
DTYPE_CHOICES = ("auto", "bf16", "fp32")
_NAMES = {  # torch attribute names: torch is imported only when a dtype is resolved
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "fp32": "float32",
    "float32": "float32",
    "fp64": "float64",
    "float64": "float64",
}
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=1)
def cpu_bf16_flags() -> tuple[str, ...]:
    """The native-bf16 instruction flags this CPU reports (``/proc/cpuinfo``; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return tuple(fl for fl in _BF16_FLAGS if fl in have)
    except OSError:
        pass
    return ()


def resolve_dtype(dtype: str | torch.dtype | None, device: str = "cpu") -> torch.dtype:
    """``auto`` (or None): bf16 on a CPU with native bf16, else fp32; a name or a dtype as given."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    name = "auto" if dtype is None else str(dtype).lower()
    if name == "auto":
        if torch.device(device).type == "cpu" and cpu_bf16_flags():
            return torch.bfloat16
        return torch.float32
    if name not in _NAMES:
        raise ConfigError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPE_CHOICES)}")
    return getattr(torch, _NAMES[name])


def dtype_label(dtype: torch.dtype) -> str:
    """bf16 / fp32 / fp64 (as ``--dtype`` spells them)."""
    name = str(dtype).replace("torch.", "")
    return {"bfloat16": "bf16", "float32": "fp32", "float64": "fp64"}.get(name, name)
