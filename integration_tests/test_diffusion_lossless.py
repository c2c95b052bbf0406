"""Diffusion drafter on the embedded engine with the default model (SmolLM2-135M-Instruct).

A tiny masked diffusion drafter with the target's vocabulary is trained here for a few
seconds (on the prompts' own tokens; its quality is beside the point), saved as an
HF-format checkpoint with the target's tokenizer, and drives greedy decoding on real
prompts: the output must be token-identical to autoregressive decoding, in tree and chain
mode and with the argmax path. A checkpoint whose tokenizer differs from the target's is
refused before anything runs.
"""

from __future__ import annotations

import pathlib
import shutil
import sys

import pytest

from specplug.adapters.hf.config import GenerationConfig
from specplug.drafters import registry
from specplug.drafters.errors import ModelError

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
from diffusion_helpers import save_tiny, tiny_model, train_tiny  # noqa: E402


@pytest.fixture(scope="module")
def prompts(default_engine, real_prompts):
    return real_prompts(default_engine, 3, repetitive=3)


@pytest.fixture(scope="module")
def ckpt(default_engine, prompts, tmp_path_factory):
    vocab = default_engine.vocab_size
    eos = default_engine.eos_token_ids[0] if default_engine.eos_token_ids else None
    model = tiny_model(vocab, seed=0, hidden=32, layers=2, eos=eos)
    train_tiny(model, [p * 3 for p in prompts], steps=40, seconds=6.0, window=32, r_max=16, lr=3e-3, batch=8)
    path = tmp_path_factory.mktemp("tiny-diffusion-smollm2")
    save_tiny(path, vocab, model=model)
    default_engine.tokenizer.save_pretrained(path)
    return str(path)


def _run(engine, prompts, name, budget, options=None, max_new=24):
    drafter = registry.create(name, engine.vocab_size, options)
    cfg = GenerationConfig(max_new_tokens=max_new)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out = [None] * len(prompts)
    for s in range(0, len(order), 8):
        idx = order[s : s + 8]
        for j, r in zip(idx, engine.generate([prompts[j] for j in idx], drafter, budget, cfg)):
            out[j] = r
    assert drafter.active_requests() == 0
    return out


@pytest.fixture(scope="module")
def ar_outputs(default_engine, prompts):
    return [r.output_ids for r in _run(default_engine, prompts, "ar", 1)]


@pytest.mark.parametrize(
    "options,budget",
    [
        ({}, 32),
        ({"mode": "chain", "k_min": 6, "k_max": 12}, 16),
        ({"path_search": "argmax", "adaptive": False, "k_min": 8, "k_max": 8}, 16),
    ],
)
def test_diffusion_greedy_is_lossless_on_real_prompts(default_engine, prompts, ar_outputs, ckpt, options, budget):
    res = _run(default_engine, prompts, "diffusion", budget, {"model_path": ckpt, **options})
    for r, ref in zip(res, ar_outputs):
        assert r.output_ids == ref
    steps = sum(r.steps for r in res)
    assert steps <= sum(len(r.output_ids) for r in res)


def test_tokenizer_mismatch_is_refused_before_generation(default_engine, prompts, ckpt, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    for f in bad.glob("tokenizer*"):
        f.unlink()
    for f in bad.glob("*.jinja"):
        f.unlink()
    words = [f"t{i}" for i in range(default_engine.vocab_size)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=words[0]))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=words[0]).save_pretrained(bad)
    drafter = registry.create("diffusion", default_engine.vocab_size, {"model_path": str(bad)})
    with pytest.raises(ModelError, match="vocabulary mismatch"):
        default_engine.generate([prompts[0]], drafter, 16, GenerationConfig(max_new_tokens=4))
    assert drafter.active_requests() == 0
