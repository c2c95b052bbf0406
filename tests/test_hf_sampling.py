"""Sampling settings validation and logit warping."""

from __future__ import annotations

import pytest
import torch

from specplug.adapters.hf.config import GenerationConfig, SamplingConfig
from specplug.adapters.hf.sampling import warp_probs
from specplug.drafters.errors import ConfigError


def test_temperature_scales_logits():
    x = torch.tensor([[1.0, 2.0, 3.0, 0.5]])
    p = warp_probs(x, SamplingConfig(temperature=0.5))
    torch.testing.assert_close(p, torch.softmax(x / 0.5, -1))


def test_top_k_keeps_k_tokens():
    x = torch.randn(5, 50)
    p = warp_probs(x, SamplingConfig(temperature=1.0, top_k=7))
    assert ((p > 0).sum(-1) == 7).all()
    top = torch.topk(x, 7).indices
    assert torch.equal(torch.sort(torch.nonzero(p[0])[:, 0]).values, torch.sort(top[0]).values)
    torch.testing.assert_close(p.sum(-1), torch.ones(5))


def test_top_p_keeps_the_smallest_set_reaching_p():
    x = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))

    def kept(q):
        return (warp_probs(x, SamplingConfig(temperature=1.0, top_p=q)) > 0).sum().item()

    assert kept(0.5) == 1 and kept(0.6) == 2 and kept(0.8) == 2 and kept(0.81) == 3 and kept(1.0) == 4
    assert kept(1e-6) == 1  # the best token always stays


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(temperature=-1.0), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(temperature=float("inf")), "temperature"),
        (dict(top_k=-1), "top_k"),
        (dict(top_k=1.5), "top_k"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(seed="x"), "seed"),
    ],
)
def test_bad_sampling_settings(kw, match):
    with pytest.raises(ConfigError, match=match):
        SamplingConfig(**kw).validate()


def test_generation_config_validation():
    GenerationConfig().validate(100)
    with pytest.raises(ConfigError, match="max_new_tokens"):
        GenerationConfig(max_new_tokens=0).validate(100)
    with pytest.raises(ConfigError, match="stop_token_ids"):
        GenerationConfig(stop_token_ids=(100,)).validate(100)
    with pytest.raises(ConfigError, match="top_p"):
        GenerationConfig(sampling=SamplingConfig(top_p=2.0)).validate(100)
