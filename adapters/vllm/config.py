"""The vLLM adapter's settings: environment variables read once, at proposer start (no vLLM import).

vLLM passes a ``custom_class`` proposer nothing but its ``VllmConfig``, so the algorithm's
options come from ``SPECPLUG_VLLM_OPTIONS`` (a JSON object or a JSON file's path, as for
SGLang), with three keys of the adapter's own beside the algorithm's:

- ``tree_budget``: nodes of the tree asked of the drafter per row (default: the algorithm's
  default budget, at least K + 1), from which the best chain of at most K tokens is cut;
- ``max_idle_steps`` / ``max_requests``: bounds on drafter state (vLLM tells departures
  through the patches; these catch what a patch cannot see).

``SPECPLUG_VLLM_LOAD_AWARE`` names the cost model the load-aware policy prices chains with.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from specplug.drafters import registry
from specplug.drafters.base import MAX_BUDGET
from specplug.drafters.budget import BudgetPolicy, load_cost_model
from specplug.drafters.errors import ConfigError
from specplug.plugins import env

__all__ = ["VllmSettings", "settings_from_env", "budget_policy_from_env", "ADAPTER_KEYS", "DEFAULT_COST_MODEL"]

#: keys of SPECPLUG_VLLM_OPTIONS that configure the adapter, not the algorithm
ADAPTER_KEYS = ("tree_budget", "max_idle_steps", "max_requests")
#: the load-aware policy's default cost model (shipped in specplug/drafters/cost_models)
DEFAULT_COST_MODEL = "cpu"
_OFF = {"off", "none", "0", "false", "no"}


@dataclass
class VllmSettings:
    """What one proposer runs with: its algorithm, validated options and bounds."""

    algorithm: str
    k: int  # num_speculative_tokens
    options: dict[str, Any] = field(default_factory=dict)
    tree_budget: int = 0
    max_idle_steps: int = 256
    max_requests: int = 4096


def _int_key(raw: dict[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    value = raw.pop(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(f"{env.VLLM_OPTIONS}: {key} must be an integer in [{lo}, {hi}], got {value!r}")
    return value


def settings_from_env(algorithm: str, k: int, environ: Mapping[str, str] | None = None) -> VllmSettings:
    """Validated settings of ``algorithm`` at ``num_speculative_tokens = k``; one ConfigError
    naming the variable and the fix otherwise."""
    spec = registry.get(algorithm)
    if not 1 <= k < MAX_BUDGET:
        raise ConfigError(f"num_speculative_tokens must be in [1, {MAX_BUDGET - 1}], got {k}")
    try:
        raw = registry.load_options(env.raw(env.VLLM_OPTIONS, environ) or None)
    except ConfigError as e:
        raise ConfigError(f"{env.VLLM_OPTIONS}: {e}") from None
    tree_budget = _int_key(raw, "tree_budget", max(spec.default_budget, k + 1), k + 1, MAX_BUDGET)
    idle = _int_key(raw, "max_idle_steps", 256, 1, 1 << 30)
    cap = _int_key(raw, "max_requests", 4096, 1, 1 << 30)
    try:
        options = registry.validate_options(spec.name, raw)
    except ConfigError as e:
        raise ConfigError(
            f"{env.VLLM_OPTIONS}: {e} (adapter keys: {', '.join(ADAPTER_KEYS)}; `specplug algorithms -v` "
            f"lists each algorithm's options)"
        ) from None
    return VllmSettings(spec.name, int(k), options, tree_budget, idle, cap)


def budget_policy_from_env(environ: Mapping[str, str] | None = None) -> BudgetPolicy | None:
    """The load-aware policy of ``SPECPLUG_VLLM_LOAD_AWARE`` (default: the shipped 'cpu' model),
    or None when it is 'off'. Ragged: vLLM verifies each row's chain at its own length, so a
    step costs its total tokens (the policy does not pad rows to one width)."""
    src = env.raw(env.VLLM_LOAD_AWARE, environ).strip() or DEFAULT_COST_MODEL
    if src.lower() in _OFF:
        return None
    try:
        cost = load_cost_model(src)
    except (ConfigError, KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"{env.VLLM_LOAD_AWARE}={src!r}: {e}; or 'off' for fixed chain lengths") from None
    return BudgetPolicy(cost, padded=False)
