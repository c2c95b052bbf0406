"""Tiny masked diffusion drafters for tests: built in memory, saved as HF-format checkpoints."""

from __future__ import annotations

import numpy as np
import torch

from specplug.drafters.diffusion_model import DiffusionConfig, MaskedDiffusionLM, save_diffusion_model


def tiny_config(vocab_size: int, hidden: int = 32, layers: int = 2, eos: int | None = None, **kw) -> DiffusionConfig:
    return DiffusionConfig(
        vocab_size=vocab_size,
        mask_token_id=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        eos_token_id=eos,
        **kw,
    )


def tiny_model(vocab_size: int, seed: int = 0, **kw) -> MaskedDiffusionLM:
    torch.manual_seed(seed)
    return MaskedDiffusionLM(tiny_config(vocab_size, **kw)).float()


def save_tiny(path, vocab_size: int, seed: int = 0, model: MaskedDiffusionLM | None = None, **kw):
    model = model if model is not None else tiny_model(vocab_size, seed, **kw)
    save_diffusion_model(model, path)
    return path


def train_tiny(
    model: MaskedDiffusionLM,
    seqs,
    steps: int,
    seconds: float,
    window: int = 16,
    r_max: int = 8,
    lr: float = 3e-3,
    seed: int = 0,
    batch: int = 16,
):
    """Train the whole tiny model (embedding included) with the real training loop."""
    from specplug.train_drafter import TrainConfig, train_loop

    cfg = TrainConfig(
        steps=steps,
        time_limit_s=seconds,
        batch=batch,
        lr=lr,
        window=window,
        r_max=r_max,
        warmup=5,
        seed=seed,
        min_lr_ratio=0.3,
    )
    plens = [1] * len(seqs)
    train_loop(
        model, [np.asarray(s, np.int64) for s in seqs], plens, cfg, out_dir=None, progress=False, train_embedding=True
    )
    return model
