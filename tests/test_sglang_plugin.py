"""The SGLang plugin: version gate, options from the environment, server-args validation,
and registration with SGLang's own registry (skipped when SGLang is not installed).

Registration tests that need SGLang run its code for real (``SpeculativeAlgorithm``,
``spec_registry``, ``load_plugins`` in a subprocess); install it for tests with
``pip install --no-deps -r integration_tests/sglang/requirements-cpu.txt``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types

import pytest

from specplug.drafters import registry
from specplug.drafters.errors import ConfigError
from specplug.plugins import sglang as plug


def sglang_available() -> bool:
    try:
        import sglang.srt.speculative.spec_info  # noqa: F401

        return True
    except Exception:
        return False


needs_sglang = pytest.mark.skipif(
    not sglang_available(),
    reason=(
        "SGLang is not importable; install it with "
        "pip install --no-deps -r integration_tests/sglang/requirements-cpu.txt"
    ),
)


# ------------------------------------------------------------------ version gate
@pytest.mark.parametrize("ver", ["0.5.23", "0.5.23.post1", "0.5.23rc1"])
def test_supported_versions_pass(ver):
    assert plug.check_version(ver) == ver


@pytest.mark.parametrize("ver", ["0.5.22", "0.5.24", "0.6.0", "1.0"])
def test_unsupported_versions_name_the_range(ver):
    with pytest.raises(plug.SglangVersionError) as e:
        plug.check_version(ver)
    assert plug.SUPPORTED_RANGE in str(e.value) and ver in str(e.value)


def test_missing_sglang_is_reported(monkeypatch):
    monkeypatch.setattr(plug, "sglang_version", lambda: None)
    with pytest.raises(plug.SglangVersionError, match="not installed"):
        plug.check_version()
    assert plug.register() == []


# ------------------------------------------------------------------ names and options
def test_every_table_algorithm_gets_an_upper_case_name():
    names = plug.engine_names()
    assert set(names.values()) == {n for n in registry.names() if not registry.get(n).peer}
    for expected in ("RACER", "TOKEN_RECYCLING", "SUFFIX", "PLD"):
        assert expected in names
    assert plug.spec_for("TOKEN_RECYCLING").name == "token-recycling"


def test_options_from_env_json_file_and_errors(tmp_path):
    assert plug.options_from_env("pld", {}) == registry.validate_options("pld", {})
    opts = plug.options_from_env("pld", {plug.OPTIONS_ENV: '{"max_ngram": 5}'})
    assert opts["max_ngram"] == 5
    path = tmp_path / "opts.json"
    path.write_text(json.dumps({"max_draft": 7}))
    assert plug.options_from_env("pld", {plug.OPTIONS_ENV: str(path)})["max_draft"] == 7
    with pytest.raises(ConfigError, match=r"SPECPLUG_SGLANG_OPTIONS: unknown option\(s\) \['nope'\]"):
        plug.options_from_env("pld", {plug.OPTIONS_ENV: '{"nope": 1}'})
    with pytest.raises(ConfigError, match="SPECPLUG_SGLANG_OPTIONS: .*max_ngram.*integer"):
        plug.options_from_env("pld", {plug.OPTIONS_ENV: '{"max_ngram": "x"}'})
    with pytest.raises(ConfigError, match="SPECPLUG_SGLANG_OPTIONS: .*not valid JSON"):
        plug.options_from_env("pld", {plug.OPTIONS_ENV: "{bad"})


def args(**kw):
    base = dict(
        disable_overlap_schedule=True,
        device="cpu",
        speculative_num_draft_tokens=16,
        speculative_draft_model_path=None,
        pp_size=1,
    )
    base.update(kw)
    return types.SimpleNamespace(**base)


def test_validator_accepts_good_args_and_names_each_fix(monkeypatch):
    monkeypatch.delenv(plug.OPTIONS_ENV, raising=False)
    validate = plug.validator_for(registry.get("racer"))
    validate(args())
    with pytest.raises(ConfigError, match="pass --disable-overlap-schedule"):
        validate(args(disable_overlap_schedule=False))
    with pytest.raises(ConfigError, match="--speculative-num-draft-tokens must lie in 1..1024"):
        validate(args(speculative_num_draft_tokens=0))
    with pytest.raises(ConfigError, match="drop --speculative-draft-model-path"):
        validate(args(speculative_draft_model_path="/m"))
    with pytest.raises(ConfigError, match="--device cuda, cpu or xpu"):
        validate(args(device="npu"))
    monkeypatch.setenv(plug.OPTIONS_ENV, '{"bogus": 1}')
    with pytest.raises(ConfigError, match="bogus"):
        validate(args())


@pytest.mark.parametrize("algo", ["del", "early-exit"])
def test_early_exit_validator_limits(algo, monkeypatch, tmp_path):
    """DEL / EARLY_EXIT run on SGLang for Llama / Qwen2 classes, TP 1, eager forwards;
    anything else is refused at server-args time naming the fix."""
    import json

    monkeypatch.delenv(plug.OPTIONS_ENV, raising=False)
    validate = plug.validator_for(registry.get(algo))
    name = registry.get(algo).engine_name

    def model(arch):
        d = tmp_path / arch
        d.mkdir(exist_ok=True)
        (d / "config.json").write_text(json.dumps({"architectures": [arch]}))
        return str(d)

    ok = dict(disable_cuda_graph=True, tp_size=1)
    validate(args(model_path=model("LlamaForCausalLM"), **ok))
    validate(args(model_path=model("Qwen2ForCausalLM"), **ok))
    validate(args(model_path="some-org/hub-id", **ok))  # not local: the worker checks the loaded class
    with pytest.raises(
        ConfigError, match=f"{name} .*model classes LlamaForCausalLM, Qwen2ForCausalLM; this model is Qwen3ForCausalLM"
    ):
        validate(args(model_path=model("Qwen3ForCausalLM"), **ok))
    with pytest.raises(ConfigError, match="supports --tp-size 1 only"):
        validate(args(model_path=model("LlamaForCausalLM"), disable_cuda_graph=True, tp_size=2))
    with pytest.raises(ConfigError, match="pass --disable-cuda-graph"):
        validate(args(model_path=model("LlamaForCausalLM"), disable_cuda_graph=False, tp_size=1))


def test_validator_of_unsupported_version_refuses_to_start():
    validate = plug.validator_for(registry.get("pld"), version_error="supports sglang>=0.5.23,<0.5.24")
    with pytest.raises(plug.SglangVersionError, match="0.5.23"):
        validate(args())


# ------------------------------------------------------------------ with SGLang
@pytest.fixture
def fresh_registry(monkeypatch):
    from sglang.srt.speculative import spec_registry

    monkeypatch.setattr(spec_registry, "_REGISTRY", {})
    return spec_registry


@needs_sglang
def test_register_is_idempotent_and_covers_the_table(fresh_registry):
    from sglang.srt.speculative.spec_info import SpeculativeAlgorithm

    from specplug.adapters.sglang.spec_algo import SpecplugSpecAlgo

    added = plug.register()
    assert sorted(added) == sorted(plug.engine_names())
    assert plug.register() == []  # every SGLang process calls it; a second call adds nothing
    algo = SpeculativeAlgorithm.from_string("racer")
    assert isinstance(algo, SpecplugSpecAlgo) and algo.name == "RACER"
    assert algo.is_ngram() and not algo.has_draft_kv() and not algo.need_topk()
    assert not algo.carries_draft_hidden_states() and algo.supports_overlap is False
    assert algo.specplug_name == "racer"
    assert algo.factory is plug._factory  # imports specplug.adapters.sglang.worker lazily
    with pytest.raises(ValueError, match="does not support overlap"):
        algo.create_worker(args(disable_overlap_schedule=False))


@needs_sglang
def test_foreign_registration_is_left_alone(fresh_registry, caplog):
    from sglang.srt.speculative.spec_info import SpeculativeAlgorithm

    SpeculativeAlgorithm.register("PLD")(lambda server_args: object)
    added = plug.register()
    assert "PLD" not in added and "RACER" in added
    assert "already registered by another plugin" in caplog.text


@needs_sglang
def test_unsupported_version_registers_names_that_refuse(fresh_registry, monkeypatch):
    monkeypatch.setattr(plug, "sglang_version", lambda: "0.5.22")
    assert "RACER" in plug.register()
    algo = fresh_registry.get_spec("RACER")
    with pytest.raises(plug.SglangVersionError, match=r"supports sglang>=0\.5\.23,<0\.5\.24, found sglang 0\.5\.22"):
        algo.validate_server_args(args())


@needs_sglang
def test_handle_server_args_resolves_like_ngram(fresh_registry):
    plug.register()
    algo = fresh_registry.get_spec("TOKEN_RECYCLING")
    sa = types.SimpleNamespace(
        max_running_requests=None,
        enable_mixed_chunk=True,
        speculative_num_draft_tokens=None,
        speculative_ngram_max_bfs_breadth=10,
    )
    algo.handle_server_args(sa)
    assert sa.max_running_requests == 48 and sa.enable_mixed_chunk is False
    assert sa.speculative_num_draft_tokens == registry.get("token-recycling").default_budget
    assert sa.speculative_eagle_topk == 10
    assert sa.speculative_num_steps == max(1, sa.speculative_num_draft_tokens // 10)


@needs_sglang
def test_entry_point_discovered_by_sglang_load_plugins():
    """SGLang's own load_plugins() finds specplug through the installed entry point."""
    code = (
        "from sglang.srt.plugins import load_plugins; load_plugins(); "
        "from sglang.srt.speculative.spec_info import SpeculativeAlgorithm as S; "
        "a = S.from_string('TOKEN_RECYCLING'); print(type(a).__name__, a.is_ngram())"
    )
    env = dict(os.environ, SGLANG_PLUGINS="specplug")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "SpecplugSpecAlgo True"
    # the SGLANG_PLUGINS whitelist excludes it: the name is unknown
    env["SGLANG_PLUGINS"] = "someone_else"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode != 0 and "Unknown speculative algorithm name: TOKEN_RECYCLING" in out.stderr
