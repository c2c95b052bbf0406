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

__all__ = [
    "CostModel",
    "BudgetPolicy",
    "choose_budgets",
    "node_gains",
    "default_cost_model",
    "load_cost_model",
    "COST_MODEL_DIR",
]

COST_MODEL_DIR = os.path.join(os.path.dirname(__file__), "cost_models")


@dataclass
class CostModel:
    """Verify time (seconds) of one forward pass vs total tokens in the batch.

    Piecewise-linear between measured points; beyond the last point, linear with the
    slope of the last segment (stated in ``extrapolation``). Where the points were measured
    as a grid (each batch size at two or more widths: ``batches``/``widths``), :meth:`step`
    prices a padded pass of ``batch`` rows of ``width`` tokens from that grid, since at the
    same total a batch-1 pass of 8 tokens and a batch-8 pass of 1 token differ (attention
    rows, per-row overheads); otherwise :meth:`step` is ``cost(batch * width)``."""

    tokens: np.ndarray
    seconds: np.ndarray
    meta: dict
    batches: np.ndarray | None = None  # per point, when measured as a (batch, width) grid
    widths: np.ndarray | None = None

    def __post_init__(self):
        t = np.asarray(self.tokens, np.float64)
        s = np.asarray(self.seconds, np.float64)
        if t.ndim != 1 or t.shape != s.shape or t.shape[0] < 2 or np.any(s <= 0) or not np.all(np.isfinite(s)):
            raise ConfigError("cost model: need >= 2 points with positive times")
        self._rows: list[tuple[int, np.ndarray, np.ndarray]] = []
        if self.batches is not None and self.widths is not None:
            self._rows = _grid_rows(np.asarray(self.batches, np.int64), np.asarray(self.widths, np.int64), s)
        # the 1D curve: the cheapest pass measured at each total (more tokens never cost less)
        order = np.argsort(t, kind="stable")
        t, s = t[order], s[order]
        uniq, first = np.unique(t, return_index=True)
        s = np.minimum.reduceat(s, first)
        if uniq.shape[0] < 2:
            raise ConfigError("cost model: need >= 2 distinct token counts")
        self.tokens, self.seconds = uniq, np.maximum.accumulate(s)

    def __call__(self, total_tokens) -> np.ndarray:
        return _piecewise(np.asarray(total_tokens, np.float64), self.tokens, self.seconds)

    @property
    def is_grid(self) -> bool:
        return bool(self._rows)

    def step(self, batch: int, widths) -> np.ndarray:
        """Seconds of a padded pass of ``batch`` rows at each of ``widths`` tokens per row."""
        w = np.asarray(widths, np.float64)
        if not self._rows:
            return self(batch * w)
        rows = self._rows
        sizes = [r[0] for r in rows]
        k = int(np.searchsorted(sizes, batch))
        if k < len(rows) and sizes[k] == batch or len(rows) == 1:
            row = rows[min(k, len(rows) - 1)]
            return _piecewise(w, row[1], row[2])
        lo, hi = (rows[k - 1], rows[k]) if 0 < k < len(rows) else (rows[-2], rows[-1]) if k else (rows[0], rows[1])
        y_lo, y_hi = _piecewise(w, lo[1], lo[2]), _piecewise(w, hi[1], hi[2])
        y = y_lo + (batch - lo[0]) / (hi[0] - lo[0]) * (y_hi - y_lo)
        # beyond the grid, linear in the batch size; never below the nearest measured row
        return np.maximum(y, y_hi if batch > hi[0] else np.minimum(y_lo, y_hi))

    def points(self) -> list[dict]:
        """The measured points as written to JSON (grid points when there are any)."""
        if self._rows:
            return [
                {"tokens": int(b * w), "batch": int(b), "width": int(w), "seconds": float(s)}
                for b, ws, ss in self._rows
                for w, s in zip(ws.tolist(), ss.tolist())
            ]
        return [{"tokens": int(t), "seconds": float(s)} for t, s in zip(self.tokens.tolist(), self.seconds.tolist())]

    @classmethod
    def from_points(cls, points: list[dict], meta: dict | None = None) -> CostModel:
        """From JSON points ``{"tokens", "seconds"[, "batch", "width"]}``."""
        try:
            tokens = np.array([int(p["tokens"]) for p in points])
            seconds = np.array([float(p["seconds"]) for p in points])
            grid = all("batch" in p and "width" in p for p in points)
            batches = np.array([int(p["batch"]) for p in points]) if grid else None
            widths = np.array([int(p["width"]) for p in points]) if grid else None
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"cost model: bad point ({e}); each needs tokens and seconds") from None
        return cls(tokens, seconds, dict(meta or {}), batches, widths)

    @classmethod
    def load(cls, path: str) -> CostModel:
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            points = data["points"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise ConfigError(f"cannot read cost model {path}: {e}; run `specplug calibrate`") from None
        return cls.from_points(points, {k: v for k, v in data.items() if k != "points"})


def _piecewise(x: np.ndarray, t: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Linear interpolation, extrapolated with the last segment's slope above ``t[-1]``."""
    y = np.interp(x, t, s)
    slope = (s[-1] - s[-2]) / (t[-1] - t[-2])
    return np.where(x > t[-1], s[-1] + (x - t[-1]) * slope, y)


def _grid_rows(batches: np.ndarray, widths: np.ndarray, seconds: np.ndarray):
    """Per batch size measured at >= 2 widths: (batch, widths, seconds non-decreasing in
    width). Empty unless every batch size has >= 2 widths (then the grid is usable)."""
    rows = []
    for b in np.unique(batches).tolist():
        sel = batches == b
        w, s = widths[sel].astype(np.float64), seconds[sel]
        order = np.argsort(w, kind="stable")
        w, s = w[order], s[order]
        if np.unique(w).shape[0] != w.shape[0] or w.shape[0] < 2 or b < 1 or w[0] < 1:
            return []
        rows.append((int(b), w, np.maximum.accumulate(s)))
    return rows


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


def load_cost_model(source: str) -> CostModel:
    """A cost model from a JSON file (``specplug calibrate --out``) or a shipped name."""
    return CostModel.load(source) if os.path.isfile(source) else default_cost_model(source)


def node_gains(trees) -> list[np.ndarray]:
    """Per tree, its node scores after the root in insertion order, made non-increasing
    (a prefix then never skips a better node; best-first growers already give this)."""
    return [np.minimum.accumulate(np.asarray(t.scores[1:], np.float64)) if len(t) > 1 else np.zeros(0) for t in trees]


def choose_budgets(
    gains,
    cost: CostModel,
    *,
    max_budget: int = 1024,
    ratio=1.0,
    min_gain: float = 1e-3,
    padded: bool = False,
    margin: float = 0.0,
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
        return _choose_width(gains, cost, max_budget, ratio, min_gain, margin)
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
    # a grid model prices a ragged pass of b rows at its mean width (it measured padded ones)
    goodput = (b + cum) / (cost.step(b, (b + n) / b) if cost.is_grid else cost(b + n))
    best = _best(goodput, margin)
    budgets = 1 + np.bincount(owner[order[:best]], minlength=b)
    return budgets.astype(np.int64), float(goodput[best]), int(b + best)


def _best(goodput: np.ndarray, margin: float) -> int:
    """The first maximum (fewest tokens at equal goodput), or 0 (no speculation) unless it
    beats no speculation by ``margin``: estimates are noisy and the steps a policy picks
    are those whose estimates are highest, so a bare "more than budget 1" over-speculates."""
    best = int(np.argmax(goodput))
    return best if goodput[best] >= (1.0 + margin) * goodput[0] else 0


def _choose_width(gains, cost, max_budget, ratio, min_gain, margin=0.0):
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
    goodput = (b + cum) / cost.step(b, n + 1)
    best = _best(goodput, margin)
    budgets = 1 + np.minimum(useful, best)
    return budgets.astype(np.int64), float(goodput[best]), int(b * (best + 1))


class BudgetPolicy:
    """Engine-side use (:class:`specplug.drafters.session.DraftSession`): the drafter proposes
    trees up to :meth:`draft_caps`; the policy cuts each to its chosen size (a prefix in
    insertion order: best-first trees stay valid and ancestor-closed). ``ratios`` per
    request come from the drafter's length calibration (``Drafter.length_ratios``), else 1.

    Draft only what can be verified (``cap_drafts``): a request's next tree is capped at
    ``2 x basis + CAP_HEADROOM`` nodes (never above the engine's budget), where ``basis`` is
    the batch's last chosen width (the largest budget chosen; a per-request basis let single
    requests' choices jump past their caps: 37% of choices changed, MAT -2%, in
    tests/test_draft_caps.py's ragged run), so host work follows load instead of staying at
    the engine's cap. A best-first
    tree under a cap is the prefix of the uncapped one, so a cap the choice stays below
    changes nothing; a request whose choice took its whole capped tree drafts its next tree
    uncapped, every request drafts at the full budget every ``CAP_REFRESH`` of its steps, and
    all caps reset when the batch size changes by 2x (load) or a request is new."""

    #: nodes over twice the last choice a capped tree keeps (room to widen)
    CAP_HEADROOM = 4
    #: a request's steps between two uncapped drafts (finds what a cap would hide)
    CAP_REFRESH = 16

    def __init__(
        self,
        cost: CostModel,
        min_gain: float = 1e-3,
        padded: bool = True,
        margin: float = 0.0,
        cap_drafts: bool = True,
    ):
        self.cost = cost
        self.min_gain = float(min_gain)
        self.margin = float(margin)  # relative goodput gain a step must promise over budget 1
        self.padded = bool(padded)  # the embedded engine pads trees to the widest one
        self.cap_drafts = bool(cap_drafts)
        self.last_budgets = np.zeros(0, np.int64)
        # rid -> [last chosen budget, steps since its last uncapped draft, the cap bound it]
        self._chosen: dict = {}
        self._asked: dict = {}  # rid -> the cap its last tree was drafted under
        self._width = 0  # the last step's chosen width
        self._batch = 0  # the last step's batch size

    def draft_caps(self, rids, max_budgets) -> np.ndarray:
        """The budgets to ask the drafter for: per request min(engine budget, cap)."""
        full = np.asarray(max_budgets, np.int64).reshape(-1)
        n = len(rids)
        if not self.cap_drafts or n == 0:
            return full
        if self._batch and not self._batch // 2 < n < 2 * self._batch:
            self._chosen.clear()  # the load changed: every request drafts in full once
        self._batch = n
        caps = full.copy()
        refresh = self.CAP_REFRESH
        for i, rid in enumerate(rids):
            st = self._chosen.get(rid)
            if st is None or st[1] >= refresh or st[2]:
                continue
            basis = max(st[0], self._width)
            caps[i] = min(full[i], 2 * basis + self.CAP_HEADROOM)
        self._asked = dict(zip(rids, caps.tolist()))
        return caps

    def forget(self, rid) -> None:
        """A request left: drop its cap state."""
        self._chosen.pop(rid, None)

    def apply(self, trees, max_budgets, ratios=None, rids=None):
        """``trees`` cut to the budgets that maximise the step's expected goodput (``rids``:
        the requests, for :meth:`draft_caps`)."""
        gains = node_gains(trees)
        ratio = 1.0 if ratios is None else ratios
        budgets, _, _ = choose_budgets(
            gains,
            self.cost,
            max_budget=int(np.max(max_budgets)),
            ratio=ratio,
            min_gain=self.min_gain,
            padded=self.padded,
            margin=self.margin,
        )
        budgets = np.minimum(budgets, np.asarray(max_budgets, np.int64))
        self.last_budgets = budgets
        if self.cap_drafts and rids is not None:
            self._record(rids, trees, budgets)
        # a prefix of a best-first tree is its best tree of that size (node_data kept)
        return [t.prefix(n) for t, n in zip(trees, budgets.tolist())]

    def _record(self, rids, trees, budgets) -> None:
        self._width = int(budgets.max()) if budgets.shape[0] else 0
        chosen = self._chosen
        asked = self._asked
        for rid, tree, n in zip(rids, trees, budgets.tolist()):
            # a choice that took a whole capped tree may have been held back by the cap:
            # that request's next tree is uncapped; an uncapped step restarts the count
            cap = asked.get(rid)
            bound = cap is not None and n >= len(tree) >= cap
            st = chosen.get(rid)
            if st is None:
                chosen[rid] = [n, 1, bound]
            else:
                st[0] = n
                st[1] = 1 if st[1] >= self.CAP_REFRESH or st[2] else st[1] + 1
                st[2] = bound
