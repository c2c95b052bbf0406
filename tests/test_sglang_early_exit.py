"""The SGLang early-exit runner's model checks (no engine; the engine runs are in
integration_tests/sglang/test_sglang_engine.py)."""

from __future__ import annotations

import pytest
import torch

from specplug.drafters.errors import ConfigError

ee = pytest.importorskip("specplug.adapters.sglang.early_exit")


def test_architectures_check_names_the_supported_classes():
    ee.check_architectures(["LlamaForCausalLM"], "DEL")
    ee.check_architectures(["Qwen2ForCausalLM"], "EARLY_EXIT")
    ee.check_architectures([], "DEL")  # unknown (hub id): the worker checks the loaded class
    with pytest.raises(
        ConfigError, match="model classes LlamaForCausalLM, Qwen2ForCausalLM; this model is GPT2LMHeadModel"
    ):
        ee.check_architectures(["GPT2LMHeadModel"], "DEL")


def test_other_model_classes_are_refused():
    class MistralForCausalLM(torch.nn.Module):
        pass

    with pytest.raises(
        ConfigError,
        match="supports the model classes LlamaForCausalLM, Qwen2ForCausalLM; the loaded model is .*MistralForCausalLM",
    ):
        ee.check_sglang_model(MistralForCausalLM())


def test_supported_classes_are_the_pinned_decoders():
    """The decoder loops the runner steers (end_layer, layers_to_capture) are pinned in
    specplug.patches.sglang (tests/test_sglang_patches.py checks them on the installed SGLang)."""
    from specplug.patches.sglang import DECODER_PINS

    assert ee.SUPPORTED_MODELS == {
        "LlamaForCausalLM": ("sglang.srt.models.llama", "LlamaModel"),
        "Qwen2ForCausalLM": ("sglang.srt.models.qwen2", "Qwen2Model"),
    }
    assert {name: pin.target for name, pin in DECODER_PINS.items()} == {
        "LlamaForCausalLM": "LlamaModel.forward",
        "Qwen2ForCausalLM": "Qwen2Model.forward",
    }
