"""Load-aware draft budgets: per step, each request's tree size from expected goodput.

SmartSpec's goodput (arXiv 2406.14066) with a per-node stopping rule (SpecDec++): the
engine verifies all trees of a step in one forward pass whose time depends on the total
number of tokens in the batch, ``cost(T)`` (a measured table: :class:`CostModel`,
``specplug calibrate``). A draft node with score s (its estimated probability of being
reached and accepted, calibrated by ``ratio``) adds s expected tokens. The step's goodput is

    (B + ratio * sum of the chosen nodes' scores) / cost(B + chosen nodes)

(B requests, each committing its bonus token). Drafters grow trees best first, so each
request's node scores are non-increasing and every prefix of its tree is ancestor-closed
and the best tree of its size: choosing the N best nodes over the whole batch is a
prefix per request. :func:`choose_budgets` sorts all nodes once, evaluates the goodput at
every N and keeps the best N: a request's budget is 1 + its nodes among them. Budget 1
(no speculation) when no node pays for its verify cost; at high load cost(T) grows
faster, so the total speculative tokens shrink.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError

__all__ = ["CostModel", "BudgetPolicy", "choose_budgets", "node_gains", "default_cost_model", "COST_MODEL_DIR"]

COST_MODEL_DIR = os.path.join(os.path.dirname(__file__), "cost_models")


@dataclass
class CostModel:
    """Verify time (seconds) of one forward pass vs total tokens in the batch.

    Piecewise-linear between measured points; beyond the last point, linear with the
    slope of the last segment (stated in ``extrapolation``)."""

    tokens: np.ndarray
    seconds: np.ndarray
    meta: dict

    def __post_init__(self):
        t = np.asarray(self.tokens, np.float64)
        s = np.asarray(self.seconds, np.float64)
        if t.ndim != 1 or t.shape != s.shape or t.shape[0] < 2 or np.any(np.diff(t) <= 0) or np.any(s <= 0):
            raise ConfigError("cost model: need >= 2 points with increasing token counts and positive times")
        self.tokens, self.seconds = t, np.maximum.accumulate(s)  # more tokens never cost less

    def __call__(self, total_tokens) -> np.ndarray:
        x = np.asarray(total_tokens, np.float64)
        t, s = self.tokens, self.seconds
        y = np.interp(x, t, s)
        slope = (s[-1] - s[-2]) / (t[-1] - t[-2])
        return np.where(x > t[-1], s[-1] + (x - t[-1]) * slope, y)

    @classmethod
    def load(cls, path: str) -> CostModel:
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"cannot read cost model {path}: {e}; run `specplug calibrate`") from None
        pts = sorted((int(p["tokens"]), float(p["seconds"])) for p in data["points"])
        return cls(
            np.array([p[0] for p in pts]),
            np.array([p[1] for p in pts]),
            {k: v for k, v in data.items() if k != "points"},
        )


def default_cost_model(name: str = "cpu") -> CostModel:
    """A cost model shipped with the package (``drafters/cost_models/<name>.json``)."""
    path = os.path.join(COST_MODEL_DIR, f"{name}.json")
    if not os.path.isfile(path):
        have = (
            sorted(f[:-5] for f in os.listdir(COST_MODEL_DIR) if f.endswith(".json"))
            if os.path.isdir(COST_MODEL_DIR)
            else []
        )
        raise ConfigError(f"no cost model {name!r}; available: {have or 'none'}; run `specplug calibrate`")
    return CostModel.load(path)


def node_gains(trees) -> list[np.ndarray]:
    """Per tree, its node scores after the root in insertion order, made non-increasing
    (a prefix then never skips a better node; best-first growers already give this)."""
    return [np.minimum.accumulate(np.asarray(t.scores[1:], np.float64)) if len(t) > 1 else np.zeros(0) for t in trees]


def choose_budgets(
    gains, cost: CostModel, *, max_budget: int = 1024, ratio=1.0, min_gain: float = 1e-3, padded: bool = False
):
    """Budgets (nodes incl. root, >= 1) maximising the step's expected goodput.

    ``gains[i]``: request i's candidate node scores, non-increasing (see :func:`node_gains`);
    ``ratio``: realised / expected accepted length (scalar or per request), the length
    calibration; nodes worth less than ``min_gain`` expected tokens are never drafted (the
    stopping rule: where verification is free, e.g. a GPU's flat region, they would only
    add drafting and memory cost). Returns (budgets int64 [B], expected goodput tokens/s,
    total tokens).

    ``padded``: the engine pads every tree to the widest one (the embedded engine; SGLang's
    fixed width per batch), so the pass costs cost(B x width): one width for the batch is
    chosen, and each request keeps min(width, its nodes worth >= min_gain) nodes."""
    b = len(gains)
    if padded and b:
        return _choose_width(gains, cost, max_budget, ratio, min_gain)
    if b == 0:
        return np.zeros(0, np.int64), 0.0, 0
    ratio = np.broadcast_to(np.asarray(ratio, np.float64), (b,))
    sizes = np.fromiter((min(len(g), max_budget - 1) for g in gains), np.int64, b)
    owner = np.repeat(np.arange(b), sizes)
    vals = np.concatenate([np.asarray(g[:n], np.float64) for g, n in zip(gains, sizes)]) if sizes.sum() else np.zeros(0)
    vals = np.clip(vals * ratio[owner], 0.0, None)
    vals = np.where(vals >= min_gain, vals, 0.0)
    order = np.argsort(-vals, kind="stable")
    order = order[: int(np.count_nonzero(vals))]
    cum = np.concatenate([[0.0], np.cumsum(vals[order])])
    n = np.arange(cum.shape[0])
    goodput = (b + cum) / cost(b + n)
    best = int(np.argmax(goodput))  # first maximum: the fewest tokens at equal goodput
    budgets = 1 + np.bincount(owner[order[:best]], minlength=b)
    return budgets.astype(np.int64), float(goodput[best]), int(b + best)


def _choose_width(gains, cost, max_budget, ratio, min_gain):
    b = len(gains)
    ratio = np.broadcast_to(np.asarray(ratio, np.float64), (b,))
    m = max_budget - 1
    g = np.zeros((b, m), np.float64)
    for i, x in enumerate(gains):
        x = np.asarray(x[:m], np.float64) * ratio[i]
        g[i, : x.shape[0]] = np.where(x >= min_gain, x, 0.0)
    useful = np.count_nonzero(g, axis=1)
    m_used = int(useful.max()) if b else 0
    cum = np.concatenate([np.zeros((b, 1)), np.cumsum(g[:, :m_used], axis=1)], axis=1).sum(axis=0)
    n = np.arange(m_used + 1)
    goodput = (b + cum) / cost(b * (n + 1))
    best = int(np.argmax(goodput))
    budgets = 1 + np.minimum(useful, best)
    return budgets.astype(np.int64), float(goodput[best]), int(b * (best + 1))


class BudgetPolicy:
    """Engine-side use (:class:`specplug.drafters.session.DraftSession`): the drafter proposes
    trees at the step's maximum budget; the policy cuts each to its chosen size (a prefix in
    insertion order: best-first trees stay valid and ancestor-closed). ``ratios`` per
    request come from the drafter's length calibration (``Drafter.length_ratios``), else 1."""

    def __init__(self, cost: CostModel, min_gain: float = 1e-3, padded: bool = True):
        self.cost = cost
        self.min_gain = float(min_gain)
        self.padded = bool(padded)  # the embedded engine pads trees to the widest one
        self.last_budgets = np.zeros(0, np.int64)

    def apply(self, trees, max_budgets, ratios=None):
        """``trees`` cut to the budgets that maximise the step's expected goodput."""
        gains = node_gains(trees)
        ratio = 1.0 if ratios is None else ratios
        budgets, _, _ = choose_budgets(
            gains,
            self.cost,
            max_budget=int(np.max(max_budgets)),
            ratio=ratio,
            min_gain=self.min_gain,
            padded=self.padded,
        )
        budgets = np.minimum(budgets, np.asarray(max_budgets, np.int64))
        self.last_budgets = budgets
        # a prefix of a best-first tree is its best tree of that size (node_data kept)
        return [t.prefix(n) for t, n in zip(trees, budgets.tolist())]
