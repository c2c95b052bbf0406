"""Tiny random models shared by the unit tests (``tests/``) and the engine tests
(``integration_tests/``, which put this folder on ``sys.path``)."""

from __future__ import annotations

import torch


def make_tiny_llama(seed: int = 0, vocab_size: int = 96, layers: int = 2, dtype=torch.float64):
    """A small random Llama built in memory. float64 and a wide init make its next-token
    choices far from ties, so greedy comparisons cannot flip on round-off."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        initializer_range=0.5,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    cfg._attn_implementation = "sdpa"
    return LlamaForCausalLM(cfg).to(dtype).eval()
