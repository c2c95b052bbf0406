"""Every ``SPECPLUG_*`` environment variable, declared once: its name, its parser and its
documentation line. Code reads a variable only through :func:`read` (or :func:`raw`), so
``specplug env`` / :func:`describe` lists all of them and a typo fails loudly.

Test-only variables of the integration tests' kernel stand-ins
(``SPECPLUG_CPU_KERNELS*``) are not product settings and live with those stand-ins.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "EnvVar",
    "VARIABLES",
    "read",
    "raw",
    "describe",
    "CACHE",
    "SGLANG_OPTIONS",
    "SGLANG_LOAD_AWARE",
    "TGI_ALGORITHM",
    "TGI_OPTIONS",
    "TGI_VERSION",
    "VLLM_OPTIONS",
    "VLLM_LOAD_AWARE",
    "DIGEST_DIR",
]


def _text(value: str) -> str:
    return value.strip()


@dataclass(frozen=True)
class EnvVar:
    name: str
    doc: str
    parse: Callable[[str], Any] = _text

    def read(self, environ: Mapping[str, str] | None = None) -> Any:
        """The parsed value, or None when unset or blank."""
        value = (os.environ if environ is None else environ).get(self.name, "")
        return self.parse(value) if value.strip() else None


VARIABLES: dict[str, EnvVar] = {}


def _declare(name: str, doc: str, parse: Callable[[str], Any] = _text) -> str:
    VARIABLES[name] = EnvVar(name, doc, parse)
    return name


CACHE = _declare(
    "SPECPLUG_CACHE",
    "directory of converted default models and trained drafters "
    "(default: $XDG_CACHE_HOME/specplug or ~/.cache/specplug)",
)
SGLANG_OPTIONS = _declare(
    "SPECPLUG_SGLANG_OPTIONS",
    "SGLang: options of the --speculative-algorithm "
    "(a JSON object, or a path to a JSON file); SGLang rejects unknown flags",
)
SGLANG_LOAD_AWARE = _declare(
    "SPECPLUG_SGLANG_LOAD_AWARE",
    "SGLang: load-aware widths per batch from a cost "
    "model (a shipped name such as 'cpu', or a JSON path); unset: fixed widths",
)
TGI_ALGORITHM = _declare(
    "SPECPLUG_TGI_ALGORITHM",
    "TGI: the specplug algorithm replacing TGI's n-gram "
    "drafting (the .pth start-up hook does nothing unless it is set); --speculate N sets "
    "the chain length",
)
TGI_OPTIONS = _declare(
    "SPECPLUG_TGI_OPTIONS", "TGI: options of that algorithm (a JSON object, or a path to a JSON file)"
)
TGI_VERSION = _declare(
    "SPECPLUG_TGI_VERSION", "TGI: the server version, for deployments whose package metadata and checkout carry none"
)
VLLM_OPTIONS = _declare(
    "SPECPLUG_VLLM_OPTIONS",
    "vLLM: options of the custom_class proposer's algorithm, plus the adapter's own "
    "(tree_budget, max_idle_steps, max_requests) (a JSON object, or a path to a JSON file)",
)
VLLM_LOAD_AWARE = _declare(
    "SPECPLUG_VLLM_LOAD_AWARE",
    "vLLM: per-row chain lengths from a cost model (a shipped name such as 'cpu', or a JSON "
    "path; default 'cpu'); 'off': every row drafts up to num_speculative_tokens",
)
DIGEST_DIR = _declare(
    "SPECPLUG_DIGEST_DIR",
    "SGLang: a directory where every worker (TP rank) writes a running digest of the draft "
    "trees it proposes, one line per step (checks that TP ranks draft identically; docs/sglang.md)",
)


def read(name: str, environ: Mapping[str, str] | None = None) -> Any:
    """The parsed value of declared variable ``name``, or None when unset or blank."""
    return VARIABLES[name].read(environ)


def raw(name: str, environ: Mapping[str, str] | None = None) -> str:
    """The variable's text as set ('' when unset), for callers that parse it themselves."""
    if name not in VARIABLES:
        raise KeyError(f"{name} is not a declared specplug environment variable")
    return (os.environ if environ is None else environ).get(name, "")


def describe() -> str:
    """One line per variable: name and documentation."""
    return "\n".join(f"{v.name:<28} {v.doc}" for v in VARIABLES.values())
