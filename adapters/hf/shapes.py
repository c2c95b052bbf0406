"""Random-weight models of published shapes, built in memory: for timing where no weights are at hand.

A verify pass costs what its shapes cost (matrix sizes, layers, heads, vocabulary), not
what its weights say, so ``specplug calibrate --random-weights llama-3.1-8b`` measures an
8B model's verify-cost curve on a machine that has no checkpoint and may download none.
The model is built directly on the target device in the target dtype (16 GB of bf16
weights for the 8B shape): initialising on the CPU first would take minutes.

The outputs of such a model mean nothing; it is never used to judge drafts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from specplug.drafters.errors import ConfigError

__all__ = ["SHAPES", "random_model"]

#: LlamaConfig fields per shape. llama-3.1-8b is Meta's published configuration less its rope
#: scaling (which changes the rotary angles, not the time, and is spelled differently across
#: transformers releases); tiny is small enough for a CPU test run.
SHAPES: dict[str, dict[str, Any]] = {
    "llama-3.1-8b": {
        "vocab_size": 128256,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "max_position_embeddings": 131072,
        "rope_theta": 500000.0,
        "rms_norm_eps": 1e-5,
    },
    "tiny": {
        "vocab_size": 512,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
    },
}


@contextlib.contextmanager
def _building_on(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """New parameters land on ``device`` in ``dtype`` (torch's default-device context)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            yield
    finally:
        torch.set_default_dtype(old)


def random_model(shape: str, dtype: torch.dtype, device: str = "cpu", seed: int = 0) -> torch.nn.Module:
    """A random-weight ``LlamaForCausalLM`` of ``shape`` (a key of :data:`SHAPES`) on ``device``,
    in eval mode with SDPA attention (the engine passes explicit 4D masks)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if shape not in SHAPES:
        raise ConfigError(f"unknown model shape {shape!r}; use one of {', '.join(SHAPES)}")
    cfg = LlamaConfig(
        **SHAPES[shape], tie_word_embeddings=False, bos_token_id=None, eos_token_id=None, pad_token_id=None
    )
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    with _building_on(torch.device(device), dtype):
        model = LlamaForCausalLM(cfg)
    model.eval()
    model.requires_grad_(False)
    return model
