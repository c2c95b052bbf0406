"""SGLang plugin: registers every specplug algorithm as a ``--speculative-algorithm`` name.

SGLang discovers this module through the ``sglang.srt.plugins`` entry point
(``specplug = specplug.plugins.sglang:register``) and calls :func:`register` in every
one of its processes. Registration walks specplug's algorithm table, so an algorithm
added there (RACER, TOKEN_RECYCLING, SUFFIX, PLD, ...) appears in SGLang without
touching this file. It is idempotent, and version-gated: on an SGLang outside
:data:`SUPPORTED_RANGE` the names are still registered, but starting a server with
them fails with an error naming the supported range (SGLang would otherwise say
only "Unknown speculative algorithm name").

Algorithm options come from ``SPECPLUG_SGLANG_OPTIONS`` (a JSON object or a path to a JSON
file), validated when SGLang checks its server args. Load-aware budgets are switched on by
``SPECPLUG_SGLANG_LOAD_AWARE``: the name of a cost model shipped in
``specplug/drafters/cost_models`` or the path of one measured with ``specplug calibrate``
(see docs/sglang.md). Both are parsed by :mod:`specplug.adapters.sglang.config`; the
supported range is :mod:`specplug.patches.sglang.version`'s.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from specplug.adapters.sglang.config import budget_policy_from_env, options_from_env
from specplug.drafters import registry
from specplug.drafters.errors import ConfigError
from specplug.patches.sglang import version as _version
from specplug.patches.sglang.version import SUPPORTED_RANGE, SglangVersionError
from specplug.plugins.env import SGLANG_LOAD_AWARE as LOAD_AWARE_ENV
from specplug.plugins.env import SGLANG_OPTIONS as OPTIONS_ENV

logger = logging.getLogger(__name__)

__all__ = [
    "SUPPORTED_RANGE",
    "OPTIONS_ENV",
    "LOAD_AWARE_ENV",
    "budget_policy_from_env",
    "SglangVersionError",
    "check_version",
    "sglang_version",
    "register",
    "engine_names",
    "spec_for",
    "options_from_env",
    "validator_for",
]


def sglang_version() -> str | None:
    return _version.sglang_version()


def check_version(ver: str | None = None) -> str:
    """Return the SGLang version, or raise SglangVersionError naming the supported range."""
    return _version.check_version(sglang_version() if ver is None else ver)


def engine_names() -> dict[str, str]:
    """SGLang algorithm name (upper case) -> specplug algorithm name, for every table entry."""
    return {spec.engine_name: spec.name for spec in registry.specs() if not spec.peer}


def spec_for(engine_name: str) -> registry.AlgorithmSpec:
    return registry.get(engine_name)


def _field(server_args, name, default=None):
    return getattr(server_args, name, default)


def validator_for(spec: registry.AlgorithmSpec, version_error: str | None = None) -> Callable[[Any], None]:
    """SGLang's ``validate_server_args`` hook for one algorithm: version, flags, options."""
    from specplug.drafters.base import MAX_BUDGET

    def validate(server_args) -> None:
        if version_error is not None:
            raise SglangVersionError(version_error)
        if spec.needs_runner:  # DEL, EARLY_EXIT: the limits of the runner in adapters/sglang/early_exit.py
            if spec.needs_runner != "early_exit":
                raise ConfigError(
                    f"--speculative-algorithm {spec.engine_name} needs a {spec.needs_runner!r} "
                    f"runner, which the SGLang adapter does not provide"
                )
            from specplug.adapters.sglang.early_exit import validate_server_args  # torch: only when needed

            validate_server_args(server_args, spec.engine_name)
        if not _field(server_args, "disable_overlap_schedule", False):
            raise ConfigError(
                f"--speculative-algorithm {spec.engine_name} runs without overlap scheduling: "
                f"pass --disable-overlap-schedule"
            )
        device = _field(server_args, "device", None)
        if device not in (None, "cuda", "cpu", "xpu"):
            raise ConfigError(
                f"--speculative-algorithm {spec.engine_name} supports --device "
                f"cuda, cpu or xpu (SGLang's NGRAM verify path), got {device!r}"
            )
        n = _field(server_args, "speculative_num_draft_tokens", None)
        if n is not None and not (1 <= int(n) <= MAX_BUDGET):
            raise ConfigError(
                f"--speculative-num-draft-tokens must lie in 1..{MAX_BUDGET} (tree nodes including the root), got {n}"
            )
        if _field(server_args, "speculative_draft_model_path", None):
            raise ConfigError(
                f"--speculative-algorithm {spec.engine_name} is model-free: drop --speculative-draft-model-path"
            )
        if int(_field(server_args, "pp_size", 1) or 1) != 1:
            raise ConfigError(f"--speculative-algorithm {spec.engine_name} supports --pp-size 1 only")
        options_from_env(spec.name)  # raises ConfigError naming the bad option
        budget_policy_from_env()  # a bad cost model fails here, not in the first step

    validate.__name__ = f"validate_{spec.name.replace('-', '_')}"
    return validate


def _spec_class():
    from specplug.adapters.sglang.spec_algo import SpecplugSpecAlgo

    return SpecplugSpecAlgo


def _factory(server_args):
    from specplug.adapters.sglang.worker import SpecplugWorker

    return SpecplugWorker


def register() -> list[str]:
    """Entry point: register every specplug algorithm with SGLang. Returns the names added.

    Safe to call any number of times in any process.
    """
    try:
        ver = check_version()
        version_error = None
    except SglangVersionError as e:
        if sglang_version() is None:
            logger.error("specplug: %s", e)
            return []
        version_error = str(e)
        logger.error("specplug: %s; its algorithms are registered but refuse to start", e)
    try:
        from sglang.srt.speculative import spec_registry
        from sglang.srt.speculative.spec_info import SpeculativeAlgorithm
    except Exception as e:  # an SGLang whose plugin API moved
        logger.error(
            "specplug: cannot reach SGLang's speculative registry (%s); specplug supports %s", e, SUPPORTED_RANGE
        )
        return []
    spec_class = _spec_class()
    added = []
    for spec in registry.specs():
        if spec.peer:  # another engine's drafter, wrapped for benchmarks only
            continue
        name = spec.engine_name
        existing = spec_registry.get_spec(name)
        if existing is not None:
            if not isinstance(existing, spec_class):
                logger.warning(
                    "specplug: speculative algorithm %s is already registered by "
                    "another plugin (%r); specplug's is not added",
                    name,
                    existing,
                )
            continue
        try:
            SpeculativeAlgorithm.register(
                name,
                supports_overlap=False,
                validate_server_args=validator_for(spec, version_error),
                spec_class=spec_class,
            )(_factory)
        except ValueError as e:  # reserved builtin name, or a registration race
            logger.warning("specplug: %s not registered: %s", name, e)
            continue
        except Exception as e:  # the registration API changed (another SGLang)
            logger.error(
                "specplug: %s not registered (%s: %s); specplug supports %s", name, type(e).__name__, e, SUPPORTED_RANGE
            )
            continue
        added.append(name)
    if added:
        logger.info(
            "specplug: registered speculative algorithms %s (sglang %s)",
            ", ".join(added),
            ver if version_error is None else sglang_version(),
        )
    return added
