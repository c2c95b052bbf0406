"""The budget-policy flags shared by ``specplug generate`` and ``specplug bench``.

Load-aware budgets are the default: each step, every tree is cut to the size that
maximises expected tokens per second of verification under this machine's cost model
(measured at first use, then cached: :func:`specplug.adapters.hf.cost.engine_cost_model`);
``--budget`` is the cap. ``--fixed-budget`` verifies every tree at ``--budget`` (for
measurements of one budget); ``--cost-model`` names another cost model.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field

from specplug.drafters.budget import BudgetPolicy, default_cost_model, load_cost_model

MEASURED = "measured"


@dataclass
class PolicyChoice:
    """What the command runs with: the policy (None: fixed budgets) and how it was chosen."""

    policy: BudgetPolicy | None
    description: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        if self.policy is None:
            return "fixed budget"
        d = self.description
        where = d.get("path") or d.get("name", "")
        how = {"measured": "measured now", "cache": "cached"}.get(d.get("source", ""), d.get("source", ""))
        extra = f" in {d['measure_s']:.1f} s" if d.get("source") == "measured" else ""
        return f"load-aware, cost model {how}{extra} ({where})"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--fixed-budget",
        action="store_true",
        help="verify every tree at --budget (no load-aware cut); for measuring one budget",
    )
    p.add_argument(
        "--cost-model",
        default=MEASURED,
        metavar="SOURCE",
        help="the load-aware policy's verify cost model: 'measured' (default: this model, "
        "device, dtype and thread count, measured at first use in seconds and cached), a shipped "
        "name (e.g. cpu) or a JSON file from `specplug calibrate`",
    )
    p.add_argument("--load-aware", dest="cost_model", help=argparse.SUPPRESS)  # the old spelling


def _source(args) -> str:
    return getattr(args, "cost_model", MEASURED) or MEASURED


def check(args) -> None:
    """Fail before the model loads when the named cost model does not exist."""
    src = _source(args)
    if not (getattr(args, "fixed_budget", False) or src == MEASURED or os.path.isfile(src)):
        default_cost_model(src)  # raises, listing what is shipped


def choose(engine, args) -> PolicyChoice:
    """The policy for ``engine`` as the flags ask (measuring the cost model if needed)."""
    if getattr(args, "fixed_budget", False):
        return PolicyChoice(None, {"policy": "fixed"})
    src = _source(args)
    if src == MEASURED:
        from specplug.adapters.hf.cost import engine_cost_model

        cached = engine_cost_model(engine)
        return PolicyChoice(BudgetPolicy(cached.model), {"policy": "load-aware", **cached.describe()})
    cost = load_cost_model(src)
    return PolicyChoice(
        BudgetPolicy(cost),
        {"policy": "load-aware", "source": "file" if os.path.isfile(src) else "shipped", "name": src},
    )
