"""Engine fixtures: the default model (loaded once per session) and tiny random Llamas.

Torch runs on one thread: the machines are small and shared, and one thread keeps
timings and floating-point reduction orders stable.
"""

from __future__ import annotations

import pathlib
import sys

import pytest
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
from tiny_models import make_tiny_llama  # noqa: E402  (shared with the unit tests)

torch.set_num_threads(1)


def make_tiny_engine(seed: int = 0, eos_token_ids=(), **kw):
    from specplug.adapters.hf.engine import HFEngine

    return HFEngine(make_tiny_llama(seed, **kw), None, eos_token_ids=list(eos_token_ids), model_name="tiny-llama")


#: prompts whose continuations repeat their own text: drafters must accept on them
REPETITIVE_TEXTS = [
    "The cat sat on the mat. The cat sat on the mat. The cat sat on the",
    "def add(a, b):\n    return a + b\n\ndef sub(a, b):\n    return a - b\n\ndef mul(a, b):\n",
    "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,",
    "SELECT name FROM users WHERE age > 30;\nSELECT name FROM users WHERE age > 40;\nSELECT",
    "for i in range(10):\n    print(i)\nfor j in range(10):\n    print(j)\nfor k in range(10):\n",
    "apple, banana, cherry, apple, banana, cherry, apple,",
    "<li>one</li>\n<li>two</li>\n<li>three</li>\n<li>",
    "Monday, Tuesday, Wednesday, Thursday, Friday, Monday, Tuesday,",
]


def real_prompt_ids(engine, per_set: int, repetitive: int = 0) -> list[list[int]]:
    """Token ids of the first ``per_set`` prompts of HumanEval, MT-Bench and GSM8K (in that
    order), then of the first ``repetitive`` of :data:`REPETITIVE_TEXTS`."""
    from specplug.prompts import encode_prompt, load_prompt_set

    sets = [load_prompt_set(name, limit=per_set) for name in ("humaneval", "mtbench", "gsm8k")]
    ids = [encode_prompt(engine, p) for s in sets for p in s]
    return ids + [engine.encode(prompt=t) for t in REPETITIVE_TEXTS[:repetitive]]


@pytest.fixture(scope="session")
def real_prompts():
    """``real_prompts(engine, per_set, repetitive=0)`` -> token ids (see :func:`real_prompt_ids`)."""
    return real_prompt_ids


@pytest.fixture(scope="session")
def default_engine():
    """SmolLM2-135M-Instruct (converted once into the user cache on first use) in the CLI's
    default dtype: bf16 on the batch-invariant kernels where this CPU has native bf16 (as
    here and in CI), fp32 elsewhere; the lossless suites run on what users run."""
    from specplug.adapters.hf.engine import HFEngine

    return HFEngine.load(dtype="auto")


@pytest.fixture(scope="session")
def default_engine_fp32():
    """The default model in fp32 on the library kernels (transformers' SDPA, F.linear)."""
    from specplug.adapters.hf.engine import HFEngine

    return HFEngine.load(dtype="fp32")


@pytest.fixture
def tiny_engine():
    return make_tiny_engine()


@pytest.fixture
def make_tiny():
    """``make_tiny(seed=0, eos_token_ids=(), vocab_size=96, layers=2, dtype=torch.float64)`` -> HFEngine."""
    return make_tiny_engine
