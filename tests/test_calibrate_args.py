"""``specplug calibrate``'s grid defaults per device and its refusals (no model is loaded)."""

from __future__ import annotations

import argparse

import pytest

from specplug import calibrate
from specplug.adapters.hf import cost
from specplug.drafters.errors import ConfigError


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    calibrate.add_arguments(p)
    return p.parse_args(list(argv))


def test_cpu_defaults_are_the_first_use_grid():
    batches, widths, max_tokens = calibrate._grid(_args(), on_gpu=False)
    assert (tuple(batches), tuple(widths), max_tokens) == (cost.GRID_BATCHES, cost.GRID_WIDTHS, cost.MAX_TOKENS)


def test_cuda_defaults_reach_512_tokens_and_batch_64():
    batches, widths, max_tokens = calibrate._grid(_args("--device", "cuda"), on_gpu=True)
    assert (batches[0], batches[-1], widths[0], widths[-1], max_tokens) == (1, 64, 1, 512, 512)
    assert calibrate._grid(_args("--batches", "1,8", "--max-tokens", "16"), on_gpu=True)[::2] == ([1, 8], 16)


def test_refusals():
    with pytest.raises(ConfigError, match="--out"):
        calibrate.run(_args("--random-weights", "tiny"))
    with pytest.raises(ConfigError, match="--out"):
        calibrate.run(_args("--widths", "1,2"))
    with pytest.raises(ConfigError, match="not both"):
        calibrate.run(_args("--random-weights", "tiny", "--model", "/x", "--out", "/tmp/x.json"))
    with pytest.raises(ConfigError, match="unknown device"):
        calibrate.run(_args("--device", "nonsense"))
