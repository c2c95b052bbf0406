"""The algorithm table: one entry per specplug algorithm, shared by every engine adapter.

An entry is a name, the drafter class by import path, a one-line description and two
flags. Reading the table (names, descriptions, engine names: what an engine plugin needs
to register the algorithms) imports no algorithm code. Everything else is declared once,
on the drafter class, and read from it on first use (the class is imported then, checked
for conformance, and cached):

* ``OPTIONS``: the options with types, ranges and defaults (:class:`.options.Option`),
  validated with errors that name the valid choices;
* ``DEFAULT_BUDGET``: the tree budget when none is given;
* ``uses_target_topk`` and ``needs_runner`` (:class:`.base.Drafter`).

The table names no engine module: drafters that wrap another engine's own algorithm for
benchmarks are registered by the benchmark side (``specplug/peers.py``).
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from .base import Drafter, check_budget
from .errors import ConfigError
from .options import Option, resolve_options

__all__ = ["Option", "AlgorithmSpec", "register", "get", "names", "specs", "create", "validate_options", "load_options"]


@dataclass(frozen=True)
class AlgorithmSpec:
    name: str  # lower case with dashes, e.g. "token-recycling"; the class's ``name``
    drafter: str  # "module:Class", imported on first use
    description: str  # one line
    tree: bool = True  # proposes trees (False: chains only)
    peer: bool = False  # another engine's drafter wrapped for `specplug bench` only: not
    # registered with any engine

    @property
    def engine_name(self) -> str:
        """Upper-case name for engines whose flags use it (SGLang: RACER, TOKEN_RECYCLING)."""
        return self.name.upper().replace("-", "_")

    def load_class(self) -> type[Drafter]:
        """The drafter class (imported once, checked against this entry)."""
        cls = _CLASSES.get(self.drafter)
        if cls is None:
            mod, _, attr = self.drafter.partition(":")
            cls = _check_class(self, getattr(importlib.import_module(mod), attr))
            _CLASSES[self.drafter] = cls
        return cls

    # read from the class: declared there only
    @property
    def options(self) -> tuple[Option, ...]:
        return self.load_class().OPTIONS

    @property
    def default_budget(self) -> int:
        return self.load_class().DEFAULT_BUDGET

    @property
    def uses_target_topk(self) -> bool:
        return bool(self.load_class().uses_target_topk)

    @property
    def needs_runner(self) -> str | None:
        return self.load_class().needs_runner

    @property
    def extra(self) -> Mapping[str, Any]:
        """Read-only ``{"needs_runner": ...}`` (empty when none), for callers of the former
        ``extra`` field; new code reads :attr:`needs_runner`."""
        need = self.needs_runner
        return MappingProxyType({"needs_runner": need} if need else {})


_TABLE: dict[str, AlgorithmSpec] = {}
_CLASSES: dict[str, type] = {}  # "module:Class" -> the checked class


def _check_class(spec: AlgorithmSpec, cls: Any) -> type[Drafter]:
    """Conformance of a drafter class with its entry; a TypeError naming the fix."""
    where = f"algorithm {spec.name!r} ({spec.drafter})"
    if not (isinstance(cls, type) and issubclass(cls, Drafter)):
        raise TypeError(f"{where}: {cls!r} is not a Drafter subclass")
    if cls.name != spec.name:
        raise TypeError(f"{where}: the class's name is {cls.name!r}; set name = {spec.name!r} on it")
    opts = getattr(cls, "OPTIONS", None)
    if not isinstance(opts, tuple) or not all(isinstance(o, Option) for o in opts):
        raise TypeError(f"{where}: declare OPTIONS, a tuple of Option, on the class")
    if len({o.name for o in opts}) != len(opts):
        raise TypeError(f"{where}: OPTIONS declares an option name twice")
    try:
        for o in opts:
            o.check(spec.name, o.default)
    except ConfigError as e:
        raise TypeError(f"{where}: an OPTIONS default fails its own check: {e}") from None
    try:
        check_budget(getattr(cls, "DEFAULT_BUDGET", None))  # type: ignore[arg-type]  # None fails: the point
    except ConfigError as e:
        raise TypeError(f"{where}: DEFAULT_BUDGET on the class: {e}") from None
    return cls


def register(spec: AlgorithmSpec) -> AlgorithmSpec:
    """Add an algorithm; registering the same spec again is a no-op, a different one raises."""
    old = _TABLE.get(spec.name)
    if old is not None and old != spec:
        raise ConfigError(f"algorithm {spec.name!r} is already registered differently")
    _TABLE[spec.name] = spec
    return spec


def _normalise(name: str) -> str:
    return str(name).strip().lower().replace("_", "-")


def names() -> list[str]:
    return sorted(_TABLE)


def specs() -> list[AlgorithmSpec]:
    return [_TABLE[n] for n in names()]


def get(name: str) -> AlgorithmSpec:
    key = _normalise(name)
    if key not in _TABLE:
        raise ConfigError(f"unknown algorithm {name!r}; available: {', '.join(names())}")
    return _TABLE[key]


def validate_options(name: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Defaults filled in, every given option checked; unknown options rejected."""
    spec = get(name)
    return resolve_options(spec.options, options, spec.name)


def load_options(text: str | None) -> dict[str, Any]:
    """Options from a JSON object string or a path to a JSON file (env vars, CLI)."""
    if text is None or not str(text).strip():
        return {}
    text = str(text).strip()
    if not text.startswith("{"):
        if not os.path.isfile(text):
            raise ConfigError(f"options must be a JSON object or a path to a JSON file; no file at {text!r}")
        with open(text, encoding="utf-8") as f:
            text = f.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"options are not valid JSON ({e}); pass an object like '{{\"budget\": 32}}'") from None
    if not isinstance(data, dict):
        raise ConfigError("options must be a JSON object, e.g. '{\"max_ngram\": 8}'")
    return data


def create(name: str, vocab_size: int, options: Mapping[str, Any] | None = None) -> Drafter:
    """Instantiate the drafter of algorithm ``name`` with validated options."""
    spec = get(name)
    return spec.load_class()(vocab_size, **validate_options(spec.name, options))


# --------------------------------------------------------------------- the table
# Options, default budgets and capabilities: on each class (OPTIONS, DEFAULT_BUDGET, ...).
register(
    AlgorithmSpec(
        name="ar",
        drafter="specplug.drafters.ar:AutoregressiveDrafter",
        description="autoregressive baseline: no speculation (one token per step)",
    )
)

register(
    AlgorithmSpec(
        name="pld",
        drafter="specplug.drafters.pld:PromptLookupDrafter",
        description="prompt lookup decoding: copy the continuation of the latest n-gram match in the context",
        tree=False,
    )
)

# --------------------------------------------------------------------- issue 3: model-free tree drafters
register(
    AlgorithmSpec(
        name="racer",
        drafter="specplug.drafters.racer:RacerDrafter",
        description="RACER: n-gram automaton retrieval fused with a shared logit adjacency table (trie union)",
    )
)

register(
    AlgorithmSpec(
        name="token-recycling",
        drafter="specplug.drafters.token_recycling:TokenRecyclingDrafter",
        description="Token Recycling: the target's recycled top-k (shared adjacency table) over a static tree template",
    )
)

register(
    AlgorithmSpec(
        name="suffix",
        drafter="specplug.drafters.suffix:SuffixDrafter",
        description="suffix decoding: per-request and global suffix tries with counts, frequency-scored trees",
    )
)

# --- issue 7: DEL (early-exit self-speculation; needs the engine's early-exit runner)
register(
    AlgorithmSpec(
        name="del",
        drafter="specplug.drafters.early_exit:DELDrafter",
        description="DEL: the target drafts with its own first E layers; E and draft length chosen online from "
        "shadow-token statistics; no speculation where it cannot pay (embedded engine; SGLang for Llama/Qwen2)",
        tree=False,
    )
)

register(
    AlgorithmSpec(
        name="early-exit",
        drafter="specplug.drafters.early_exit:EarlyExitDrafter",
        description="fixed-exit self-speculation baseline (transformers' assistant_early_exit style): draft "
        "draft_len tokens with the first exit_layer layers (embedded engine; SGLang for Llama/Qwen2)",
        tree=False,
    )
)

# --------------------------------------------------------------------- issue 8: diffusion
register(
    AlgorithmSpec(
        name="diffusion",
        drafter="specplug.drafters.diffusion:DiffusionDrafter",
        description="masked diffusion drafter: k slots denoised in one pass, lattice + causal-consistency beam "
        "search (DiffuSpec), adaptive draft length; needs model_path (specplug train-drafter)",
    )
)
