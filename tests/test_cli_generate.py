"""``specplug generate``: bad input exits 2 with one ``specplug: error:`` line, before any
model is loaded (so these run in well under a second each)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from specplug import cli
from specplug.adapters.hf import engine as _engine_module  # noqa: F401  (patched below)


@pytest.fixture
def main(monkeypatch, capsys):
    # only this subcommand: others may be under construction; loading a model is an error here
    monkeypatch.setattr(cli, "COMMANDS", {"generate": cli.COMMANDS["generate"]})

    def no_load(*a, **kw):
        raise AssertionError("the model must not be loaded for this input")

    monkeypatch.setattr("specplug.adapters.hf.engine.HFEngine.load", classmethod(no_load))

    def run(*argv):
        rc = cli.main(["generate", *argv])
        return rc, capsys.readouterr().err

    return run


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--algorithm", "nope", "hi"], "unknown algorithm 'nope'; available: .*pld"),
        (["--budget", "0", "hi"], "budget must be an integer in 1..1024"),
        (["--budget", "1025", "hi"], "budget must be an integer in 1..1024"),
        (["--temperature", "-0.5", "hi"], "temperature must be"),
        (["--temperature", "nan", "hi"], "temperature must be"),
        (["--top-p", "0", "hi"], r"top_p must be a number in \(0, 1\]"),
        (["--top-p", "1.01", "hi"], r"top_p must be a number in \(0, 1\]"),
        (["--top-k", "-1", "hi"], "top_k must be"),
        (["--max-new-tokens", "0", "hi"], "max-new-tokens"),
        (["--threads", "0", "hi"], "threads"),
        (["--model", "/no/such/dir", "hi"], "model path /no/such/dir does not exist"),
        (["   "], "prompt is empty"),
        (["--chat", ""], "prompt is empty"),
        ([], "exactly one of PROMPT"),
        (["hi", "--chat", "there"], "exactly one of PROMPT"),
        (["--options", "{oops", "hi"], "not valid JSON"),
        (["--options", '{"nope": 1}', "hi"], "unknown option"),
        (["--options", '{"max_ngram": 0}', "hi"], "max_ngram"),
    ],
)
def test_bad_input_exits_2_with_one_line(main, argv, match):
    import re

    rc, err = main(*argv)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("specplug: error: "), err
    assert re.search(match, lines[0]), lines[0]


def test_model_directory_without_config(main, tmp_path):
    rc, err = main("--model", str(tmp_path), "hi")
    assert rc == 2 and "no config.json" in err


def test_prompt_longer_than_context_is_a_config_error(monkeypatch, capsys):
    """The context check needs the tokenizer: a fake engine stands in for the model."""
    from specplug.drafters.errors import ConfigError

    monkeypatch.setattr(cli, "COMMANDS", {"generate": cli.COMMANDS["generate"]})

    class Fake:
        vocab_size = 100

        def encode(self, prompt=None, messages=None):
            raise ConfigError("the prompt has 9000 tokens; the model's context is 8192 tokens")

    monkeypatch.setattr("specplug.adapters.hf.engine.HFEngine.load", classmethod(lambda cls, **kw: Fake()))
    import torch

    threads = torch.get_num_threads()  # generate sets the machine's cores: later tests keep one
    try:
        assert cli.main(["generate", "x" * 10]) == 2
    finally:
        torch.set_num_threads(threads)
    assert "context is 8192" in capsys.readouterr().err


def test_subprocess_exit_code_and_no_traceback():
    code = (
        "import sys; from specplug import cli; "
        "cli.COMMANDS = {'generate': cli.COMMANDS['generate']}; "
        "sys.exit(cli.main(sys.argv[1:]))"
    )
    p = subprocess.run(
        [sys.executable, "-c", code, "generate", "--algorithm", "nope", "hi"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2
    assert "Traceback" not in p.stderr and p.stderr.startswith("specplug: error: unknown algorithm")


def test_generate_runs_and_compares_on_a_tiny_model(monkeypatch, capsys):
    """End to end through the CLI with a tiny random Llama standing in for the default model."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from specplug.adapters.hf.engine import HFEngine

    monkeypatch.setattr(cli, "COMMANDS", {"generate": cli.COMMANDS["generate"]})
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=128,
        initializer_range=0.5,
    )
    model = LlamaForCausalLM(cfg).to(torch.float64).eval()

    class Tok:
        eos_token_id = None
        chat_template = None

        def __call__(self, text, **kw):
            return {"input_ids": [3 + ord(c) % 60 for c in text]}

        def decode(self, ids, **kw):
            return " ".join(map(str, ids))

    monkeypatch.setattr(HFEngine, "load", classmethod(lambda cls, **kw: HFEngine(model, Tok(), eos_token_ids=[])))
    threads = torch.get_num_threads()
    try:
        rc = cli.main(["generate", "abcabcabcabc", "--max-new-tokens", "12", "--budget", "5"])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert rc == 0
    assert "speedup:" in out and "MAT" in out and "greedy output vs autoregressive: identical" in out
    assert len(out.splitlines()[0].split()) == 12
