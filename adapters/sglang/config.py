"""The SGLang adapter's settings from the environment (SGLang rejects unknown CLI flags).

Read by the plugin's server-args check (a bad value stops the server) and by the worker
(:mod:`specplug.plugins.env` declares the variables). No SGLang import.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from specplug.drafters import registry
from specplug.drafters.budget import BudgetPolicy, load_cost_model
from specplug.drafters.errors import ConfigError
from specplug.plugins import env

__all__ = ["options_from_env", "budget_policy_from_env"]


def options_from_env(algo: str, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Validated options of ``algo`` from ``SPECPLUG_SGLANG_OPTIONS`` (defaults filled in)."""
    try:
        return registry.validate_options(algo, registry.load_options(env.raw(env.SGLANG_OPTIONS, environ) or None))
    except ConfigError as e:
        raise ConfigError(f"{env.SGLANG_OPTIONS}: {e}") from None


def budget_policy_from_env(environ: Mapping[str, str] | None = None) -> BudgetPolicy | None:
    """The load-aware policy named by ``SPECPLUG_SGLANG_LOAD_AWARE`` (a shipped cost model's
    name or a JSON path), or None when unset."""
    src = env.raw(env.SGLANG_LOAD_AWARE, environ).strip()
    if not src:
        return None
    try:
        cost = load_cost_model(src)
    except (ConfigError, KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"{env.SGLANG_LOAD_AWARE}={src!r}: {e}") from None
    # SGLang verifies every request of a step at one width: the padded goodput model
    return BudgetPolicy(cost, padded=True)
