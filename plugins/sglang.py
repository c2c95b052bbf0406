"""SGLang plugin: registers every specplug algorithm as a ``--speculative-algorithm`` name.

SGLang discovers this module through the ``sglang.srt.plugins`` entry point
(``specplug = specplug.plugins.sglang:register``) and calls :func:`register` in every
one of its processes. Registration walks specplug's algorithm table, so an algorithm
added there (RACER, TOKEN_RECYCLING, SUFFIX, PLD, ...) appears in SGLang without
touching this file. It is idempotent, and version-gated: on an SGLang outside
:data:`SUPPORTED_RANGE` the names are still registered, but starting a server with
them fails with an error naming the supported range (SGLang would otherwise say
only "Unknown speculative algorithm name").

Algorithm options come from the environment variable :data:`OPTIONS_ENV` (a JSON
object or a path to a JSON file), validated when SGLang checks its server args.
Load-aware budgets are switched on by :data:`LOAD_AWARE_ENV`: the name of a cost model
shipped in ``specplug/drafters/cost_models`` or the path of one measured with
``specplug calibrate`` (see docs/sglang.md).
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable

from specplug.drafters import registry
from specplug.drafters.errors import ConfigError

logger = logging.getLogger(__name__)

#: the SGLang releases this adapter is written and tested against
SUPPORTED_MIN = (0, 5, 23)
SUPPORTED_MAX_EXCLUSIVE = (0, 5, 24)
SUPPORTED_RANGE = "sglang>=0.5.23,<0.5.24"
#: environment variable holding the algorithm options (JSON object or JSON file path)
OPTIONS_ENV = "SPECPLUG_SGLANG_OPTIONS"
#: environment variable switching on load-aware budgets: a cost model name or JSON path
LOAD_AWARE_ENV = "SPECPLUG_SGLANG_LOAD_AWARE"

__all__ = ["SUPPORTED_RANGE", "OPTIONS_ENV", "LOAD_AWARE_ENV", "budget_policy_from_env", "SglangVersionError", "check_version",
           "sglang_version", "register", "engine_names", "spec_for", "options_from_env",
           "validator_for"]


class SglangVersionError(ConfigError):
    """The installed SGLang is outside the supported range."""


def sglang_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sglang")
    except PackageNotFoundError:
        return None


def _release(ver: str) -> tuple[int, ...]:
    """(major, minor, patch) of a version string, ignoring pre/post/local tags."""
    try:
        from packaging.version import Version

        return tuple(Version(ver).release[:3])
    except Exception:  # packaging missing or odd string: parse the leading digits
        parts = []
        for piece in ver.split(".")[:3]:
            digits = "".join(ch for ch in piece if ch.isdigit())
            if not digits:
                break
            parts.append(int(digits))
        return tuple(parts)


def check_version(ver: str | None = None) -> str:
    """Return the SGLang version, or raise SglangVersionError naming the supported range."""
    ver = sglang_version() if ver is None else ver
    if ver is None:
        raise SglangVersionError(f"SGLang is not installed; specplug's SGLang adapter needs "
                                 f"{SUPPORTED_RANGE} (pip install 'specplug[sglang]')")
    rel = _release(ver)
    if not (SUPPORTED_MIN <= rel < SUPPORTED_MAX_EXCLUSIVE):
        raise SglangVersionError(
            f"specplug's SGLang adapter supports {SUPPORTED_RANGE}, found sglang {ver}; "
            f"install a supported SGLang (pip install 'sglang==0.5.23') or a specplug release "
            f"built for sglang {ver}")
    return ver


def engine_names() -> dict[str, str]:
    """SGLang algorithm name (upper case) -> specplug algorithm name, for every table entry."""
    return {spec.engine_name: spec.name for spec in registry.specs() if not spec.peer}


def spec_for(engine_name: str) -> registry.AlgorithmSpec:
    return registry.get(engine_name)


def options_from_env(algo: str, environ: dict | None = None) -> dict[str, Any]:
    """Validated options of ``algo`` from :data:`OPTIONS_ENV` (defaults filled in)."""
    env = os.environ if environ is None else environ
    raw = env.get(OPTIONS_ENV)
    try:
        given = registry.load_options(raw)
        return registry.validate_options(algo, given)
    except ConfigError as e:
        raise ConfigError(f"{OPTIONS_ENV}: {e}") from None


def budget_policy_from_env(environ: dict | None = None):
    """The load-aware :class:`BudgetPolicy` named by :data:`LOAD_AWARE_ENV`, or None (unset)."""
    env = os.environ if environ is None else environ
    src = str(env.get(LOAD_AWARE_ENV, "") or "").strip()
    if not src:
        return None
    from specplug.drafters.budget import BudgetPolicy, CostModel, default_cost_model

    try:
        cost = CostModel.load(src) if os.path.isfile(src) else default_cost_model(src)
    except (ConfigError, KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"{LOAD_AWARE_ENV}={src!r}: {e}") from None
    # SGLang verifies every request of a step at one width: the padded goodput model
    return BudgetPolicy(cost, padded=True)


def _field(server_args, name, default=None):
    return getattr(server_args, name, default)


def _model_architectures(server_args) -> list[str]:
    """``architectures`` of the checkpoint's config.json (a local directory), else []."""
    import json

    path = _field(server_args, "model_path", None)
    cfg = os.path.join(str(path), "config.json") if path else ""
    if not cfg or not os.path.isfile(cfg):
        return []       # a hub id: the worker checks the loaded model class instead
    try:
        with open(cfg) as f:
            return list(json.load(f).get("architectures") or [])
    except (OSError, ValueError):
        return []


def _validate_early_exit(spec: registry.AlgorithmSpec, server_args) -> None:
    """Limits of the SGLang early-exit runner, refused at server-args time with the fix."""
    if spec.extra.get("needs_runner") != "early_exit":
        raise ConfigError(f"--speculative-algorithm {spec.engine_name} needs a "
                          f"{spec.extra.get('needs_runner')!r} runner, which the SGLang adapter does not provide")
    name = spec.engine_name
    if int(_field(server_args, "tp_size", 1) or 1) != 1:
        raise ConfigError(f"--speculative-algorithm {name} (early-exit drafting) supports --tp-size 1 only")
    if not _field(server_args, "disable_cuda_graph", False):
        raise ConfigError(f"--speculative-algorithm {name} runs partial-layer forwards eagerly (a replayed "
                          f"graph runs every layer): pass --disable-cuda-graph")
    from specplug.adapters.sglang.early_exit import check_architectures

    check_architectures(_model_architectures(server_args), name)


def validator_for(spec: registry.AlgorithmSpec, version_error: str | None = None
                  ) -> Callable[[Any], None]:
    """SGLang's ``validate_server_args`` hook for one algorithm: version, flags, options."""
    from specplug.drafters.base import MAX_BUDGET

    def validate(server_args) -> None:
        if version_error is not None:
            raise SglangVersionError(version_error)
        if spec.extra.get("needs_runner"):   # DEL, EARLY_EXIT: adapters/sglang/early_exit.py
            _validate_early_exit(spec, server_args)
        if not _field(server_args, "disable_overlap_schedule", False):
            raise ConfigError(
                f"--speculative-algorithm {spec.engine_name} runs without overlap scheduling: "
                f"pass --disable-overlap-schedule")
        device = _field(server_args, "device", None)
        if device not in (None, "cuda", "cpu", "xpu"):
            raise ConfigError(f"--speculative-algorithm {spec.engine_name} supports --device "
                              f"cuda, cpu or xpu (SGLang's NGRAM verify path), got {device!r}")
        n = _field(server_args, "speculative_num_draft_tokens", None)
        if n is not None and not (1 <= int(n) <= MAX_BUDGET):
            raise ConfigError(f"--speculative-num-draft-tokens must lie in 1..{MAX_BUDGET} "
                              f"(tree nodes including the root), got {n}")
        if _field(server_args, "speculative_draft_model_path", None):
            raise ConfigError(f"--speculative-algorithm {spec.engine_name} is model-free: "
                              f"drop --speculative-draft-model-path")
        if int(_field(server_args, "pp_size", 1) or 1) != 1:
            raise ConfigError(f"--speculative-algorithm {spec.engine_name} supports "
                              f"--pp-size 1 only")
        options_from_env(spec.name)  # raises ConfigError naming the bad option
        budget_policy_from_env()     # a bad cost model fails here, not in the first step

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
        logger.error("specplug: cannot reach SGLang's speculative registry (%s); "
                     "specplug supports %s", e, SUPPORTED_RANGE)
        return []
    spec_class = _spec_class()
    added = []
    for spec in registry.specs():
        if spec.peer:               # another engine's drafter, wrapped for benchmarks only
            continue
        name = spec.engine_name
        existing = spec_registry.get_spec(name)
        if existing is not None:
            if not isinstance(existing, spec_class):
                logger.warning("specplug: speculative algorithm %s is already registered by "
                               "another plugin (%r); specplug's is not added", name, existing)
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
            logger.error("specplug: %s not registered (%s: %s); specplug supports %s",
                         name, type(e).__name__, e, SUPPORTED_RANGE)
            continue
        added.append(name)
    if added:
        logger.info("specplug: registered speculative algorithms %s (sglang %s)",
                    ", ".join(added), ver if version_error is None else sglang_version())
    return added
