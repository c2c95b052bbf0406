"""The SGLang adapter's settings from the environment (SGLang rejects unknown CLI flags).

Read by the plugin's server-args check (a bad value stops the server) and by the worker
(:mod:`specplug.plugins.env` declares the variables). No SGLang import.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from specplug.drafters import registry
from specplug.drafters.budget import BudgetPolicy, load_cost_model
from specplug.drafters.digest import DigestLog
from specplug.drafters.errors import ConfigError
from specplug.plugins import env

__all__ = ["options_from_env", "budget_policy_from_env", "digest_log"]


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


def digest_log(algorithm: str, width: int, parallel: Any, environ: Mapping[str, str] | None = None) -> DigestLog | None:
    """This worker's draft-tree digest file in ``SPECPLUG_DIGEST_DIR`` (None when unset):
    ``sglang-tp<rank>.digest``, with ``-dp<rank>`` / ``-pp<rank>`` before ``-tp`` where those
    are not 0. ``parallel``: SGLang's ``get_parallel()`` (its ranks, read by name)."""
    directory = env.read(env.DIGEST_DIR, environ)
    if directory is None:
        return None

    def rank(name: str) -> int:
        try:
            return int(getattr(parallel, name) or 0)
        except Exception:  # noqa: BLE001 -- a field this SGLang never set: not in use
            return 0

    meta = {k: rank(k) for k in ("tp_rank", "tp_size", "pp_rank", "dp_rank")}
    ranks = "".join(f"-{k}{meta[k + '_rank']}" for k in ("dp", "pp") if meta[k + "_rank"])
    path = os.path.join(directory, f"sglang{ranks}-tp{meta['tp_rank']}.digest")
    return DigestLog(
        path, {"engine": "sglang", "algorithm": algorithm, "width": int(width), "pid": os.getpid(), **meta}
    )
