"""The SGLang early-exit runner's model checks (no engine; the engine runs are in
integration_tests/sglang/test_sglang_engine.py)."""
from __future__ import annotations

import importlib

import pytest
import torch

from specplug.drafters.errors import ConfigError

ee = pytest.importorskip("specplug.adapters.sglang.early_exit")


def test_architectures_check_names_the_supported_classes():
    ee.check_architectures(["LlamaForCausalLM"], "DEL")
    ee.check_architectures(["Qwen2ForCausalLM"], "EARLY_EXIT")
    ee.check_architectures([], "DEL")            # unknown (hub id): the worker checks the loaded class
    with pytest.raises(ConfigError, match="model classes LlamaForCausalLM, Qwen2ForCausalLM; this model is "
                                          "GPT2LMHeadModel"):
        ee.check_architectures(["GPT2LMHeadModel"], "DEL")


def test_other_model_classes_are_refused():
    class MistralForCausalLM(torch.nn.Module):
        pass

    with pytest.raises(ConfigError, match="supports the model classes LlamaForCausalLM, Qwen2ForCausalLM; "
                                          "the loaded model is .*MistralForCausalLM"):
        ee.check_sglang_model(MistralForCausalLM())


def test_pinned_decoder_forward_matches_the_installed_sglang():
    """The runner relies on the decoder loop honouring end_layer and layers_to_capture: the
    fingerprints pinned in SUPPORTED_MODELS are those of the installed SGLang 0.5.23's code
    (imported in a subprocess with the CPU start-up hook, as the engine tests do)."""
    import json
    import os
    import pathlib
    import subprocess
    import sys

    pytest.importorskip("sglang")
    from specplug.plugins.sglang import SglangVersionError, check_version

    try:
        check_version()
    except SglangVersionError as e:
        pytest.skip(str(e))
    kernels = pathlib.Path(__file__).resolve().parents[1] / "integration_tests" / "sglang" / "cpu_kernels"
    env = dict(os.environ, SGLANG_USE_CPU_ENGINE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(kernels)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    code = ("import importlib, json\n"
            "from specplug.adapters.sglang.early_exit import SUPPORTED_MODELS\n"
            "from specplug.patches.base import object_fingerprint\n"
            "out = {}\n"
            "for name, (module, decoder, fps) in SUPPORTED_MODELS.items():\n"
            "    mod = importlib.import_module(module)\n"
            "    out[name] = [object_fingerprint(getattr(mod, decoder).forward) in fps,\n"
            "                 getattr(mod, name).__module__ == module]\n"
            "print('RESULT' + json.dumps(out))\n")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    if proc.returncode != 0 or not line:
        pytest.skip(f"SGLang's model modules do not import here: {proc.stderr[-500:]}")
    out = json.loads(line[-1][len("RESULT"):])
    assert out == {name: [True, True] for name in ee.SUPPORTED_MODELS}
