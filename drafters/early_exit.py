"""Early-exit self-speculation: the target drafts with its own first E layers (DEL, fixed E).

The target drafts a chain with its first E layers plus its final norm and LM head (the
KV of those layers at the draft positions is the target's own), then verifies the chain
with the full model. Two drafters share this module:

* ``early-exit`` (:class:`EarlyExitDrafter`): fixed exit layer E and draft length γ, the
  baseline of transformers' ``assistant_early_exit`` / LayerSkip self-speculation.
* ``del`` (:class:`DELDrafter`): DEL (arXiv 2504.05598) picks E and γ online:

  - **shadow tokens**: at a verification, the final norm + LM head applied to the hidden
    states of candidate layers at the committed positions (the accepted path and the bonus
    position: "up to the first mismatch at the current exit layer"); their argmax is
    compared with the final layer's; per-layer decayed match / mismatch counts and
    confidence sums (:class:`LayerStats`, decay ω per observed position) are kept,
    vectorised over layers; seeded from the last 32 prompt positions;
  - **selection** (:func:`select_exit`): with α_E = match / (match + mismatch), maximise
    tokens-per-time TPL(E, γ) = [(1 - α_E^(γ+1)) / (1 - α_E)] / cost(E, γ) over E and
    γ <= 18, where cost is the paper's layer count (L - E) + (γ + 1)·E (``cost="layers"``)
    or, by default, the *measured* forward-pass cost model of the engine
    (:class:`ExitCost`, ``cost="measured"``);
  - **dynamic draft exit**: drafting stops once a draft token's probability falls below
    the midpoint of the mean confidences on matches and on mismatches at layer E;
  - **never slower by design**: no speculation when no (E, γ) beats autoregressive
    decoding by ``min_gain`` under the cost model; shadow probing then runs on a cost
    budget (a ``probe_budget`` fraction of the step time, :class:`ProbeCredit`) over a
    small cost-feasible candidate set (:func:`feasible_layers`).

Engine access goes through the narrow :class:`EarlyExitRunner` protocol that each adapter
implements (the embedded engine: ``specplug.adapters.hf.early_exit``). Drafters with
``needs_runner = "early_exit"`` get it through :meth:`Drafter.bind` before ``start``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from .base import Drafter, RequestId
from .budget import CostModel, default_cost_model
from .errors import ConfigError
from .options import Option, resolve_options
from .tree import DraftTree

__all__ = [
    "EarlyExitRunner",
    "ShadowTokens",
    "shadow_layers",
    "LayerStats",
    "ExitCost",
    "select_exit",
    "tpl_table",
    "step_costs",
    "expected_tokens",
    "feasible_layers",
    "ProbeCredit",
    "EarlyExitDrafter",
    "DELDrafter",
]


# ----------------------------------------------------------------------------- the runner protocol
@dataclass
class ShadowTokens:
    """Per-layer early-exit predictions at P positions whose final-layer token is known.

    ``layers[K]`` exit layers (hidden state after that many decoder layers), ``tokens[K, P]``
    and ``probs[K, P]`` the argmax of final norm + LM head at each and its probability,
    ``final[P]`` the final layer's argmax at the same positions."""

    layers: np.ndarray
    tokens: np.ndarray
    probs: np.ndarray
    final: np.ndarray

    @property
    def hits(self) -> np.ndarray:
        return self.tokens == self.final[None, :]


def shadow_layers(layers, num_layers: int) -> np.ndarray:
    """Validated exit layers for shadow tokens (runners' ``request_shadow``): 1..L-1."""
    layers = np.asarray(layers, np.int64)
    if np.any((layers < 1) | (layers >= num_layers)):
        raise ConfigError(f"shadow layers must lie in 1..{num_layers - 1}, got {layers.tolist()}")
    return layers


@runtime_checkable
class EarlyExitRunner(Protocol):
    """What an engine adapter provides to early-exit drafters (one instance per batch).

    ``num_layers``: the target's decoder layers L. ``cost_profile()``: (share of the final
    norm + LM head, per-layer shares [L]) of a one-token forward's compute, summing to 1.

    ``draft(rids, tokens, step, exit_layers)``: feed ``tokens[i]`` at draft offset ``step``
    (0 = the root, at the request's committed length) of request ``rids[i]`` through
    decoder layers ``< exit_layers[i]`` with the shared KV cache (writing those layers' KV
    at that position; the verification overwrites it), then final norm + LM head; return
    (argmax ids [n] int64, their probabilities [n] float32). Offsets run 0, 1, 2, ... per
    step; a request leaves the loop by not being passed again.

    ``request_shadow(rid, layers)``: keep the hidden states of these exit layers at the next
    verification of ``rid`` (its committed positions). ``shadow(rid)``: the
    :class:`ShadowTokens` of that verification (None if none was kept); consumed once.

    ``request_prompt_shadow(layers, n)``: before prefill, keep the last ``n`` prompt
    positions' hidden states of these layers; ``prompt_shadow(rid)`` returns them (the
    final-layer token of the last prompt position is the first generated token).
    """

    num_layers: int

    def cost_profile(self) -> tuple[float, np.ndarray]: ...

    def draft(
        self, rids: Sequence[RequestId], tokens: np.ndarray, step: int, exit_layers: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def request_shadow(self, rid: RequestId, layers: np.ndarray) -> None: ...

    def shadow(self, rid: RequestId) -> ShadowTokens | None: ...

    def request_prompt_shadow(self, layers: np.ndarray, n: int) -> None: ...

    def prompt_shadow(self, rid: RequestId) -> ShadowTokens | None: ...


# ----------------------------------------------------------------------------- statistics
class LayerStats:
    """Decayed per-layer match / mismatch counts and confidence sums, index = exit layer (0..L).

    Each observed position decays the older ones by ω: after P new positions the old
    counts weigh ω^P and position i of the batch (0 oldest) weighs ω^(P-1-i)."""

    __slots__ = ("decay", "match", "mismatch", "conf_match", "conf_mismatch", "version")

    def __init__(self, num_layers: int, decay: float = 0.95):
        self.decay = float(decay)
        n = int(num_layers) + 1
        self.match = np.zeros(n)
        self.mismatch = np.zeros(n)
        self.conf_match = np.zeros(n)
        self.conf_mismatch = np.zeros(n)
        self.version = 0  # bumped by every update: a plan made from these numbers stays valid

    def copy(self) -> LayerStats:
        c = LayerStats(self.match.shape[0] - 1, self.decay)
        c.match, c.mismatch = self.match.copy(), self.mismatch.copy()
        c.conf_match, c.conf_mismatch = self.conf_match.copy(), self.conf_mismatch.copy()
        return c

    def update(self, layers, hits, conf) -> None:
        """``hits[K, P]`` bool and ``conf[K, P]`` (probability of the layer's argmax) at P
        positions, oldest first, for the K exit ``layers`` (distinct)."""
        layers = np.asarray(layers, np.int64)
        hits = np.asarray(hits, bool).reshape(layers.shape[0], -1)
        conf = np.asarray(conf, np.float64).reshape(hits.shape)
        p = hits.shape[1]
        if p == 0 or layers.shape[0] == 0:
            return
        self.version += 1
        w = self.decay ** np.arange(p - 1, -1, -1, dtype=np.float64)  # [P]
        old = self.decay**p
        hw = hits * w
        mw = (~hits) * w
        self.match[layers] = old * self.match[layers] + hw.sum(1)
        self.mismatch[layers] = old * self.mismatch[layers] + mw.sum(1)
        self.conf_match[layers] = old * self.conf_match[layers] + (hw * conf).sum(1)
        self.conf_mismatch[layers] = old * self.conf_mismatch[layers] + (mw * conf).sum(1)

    def weight(self, layers) -> np.ndarray:
        layers = np.asarray(layers, np.int64)
        return self.match[layers] + self.mismatch[layers]

    def alpha(self, layers) -> np.ndarray:
        """α_E = match / (match + mismatch); 0 where nothing was observed."""
        layers = np.asarray(layers, np.int64)
        tot = self.match[layers] + self.mismatch[layers]
        return np.divide(self.match[layers], tot, out=np.zeros(layers.shape[0]), where=tot > 0)

    def threshold(self, layer: int) -> float:
        """Midpoint of the mean confidences on matches and on mismatches (0: no stop yet)."""
        m, mm = self.match[layer], self.mismatch[layer]
        if m <= 0 or mm <= 0:
            return 0.0
        return 0.5 * (self.conf_match[layer] / m + self.conf_mismatch[layer] / mm)


# ----------------------------------------------------------------------------- the cost model
class ExitCost:
    """Time of one speculative step with exit layer E and γ draft tokens, and of one AR step.

    ``kind="layers"``: the paper's unit, layers computed: step = (L - E) + (γ + 1)·E, AR = L.
    ``kind="measured"``: seconds from the engine's measured forward cost c(n) of n tokens
    (``drafters/cost_models/<name>.json``): each draft token runs E layers plus the LM head,
    c(1)·(head + Σ_{l<E} layer_l) (the runner's compute shares), and the verification
    recomputes all layers for the root and the γ drafts, c(γ + 1); AR = c(1). On a CPU,
    where c(n) grows with n, this is what decides whether speculation pays."""

    def __init__(
        self, num_layers: int, head_share: float, layer_shares, kind: str = "measured", table: CostModel | None = None
    ):
        if kind not in ("measured", "layers"):
            raise ConfigError(f"cost must be 'measured' or 'layers', got {kind!r}")
        self.L = int(num_layers)
        shares = np.asarray(layer_shares, np.float64)
        total = head_share + shares.sum() if shares.shape == (self.L,) else 0.0
        if shares.shape != (self.L,) or np.any(shares < 0) or head_share < 0 or not shares.sum() > 0:
            raise ConfigError(
                "cost profile: need a non-negative head share and one non-negative share per "
                "layer, the layers' summing to > 0"
            )
        self.head = float(head_share / total)
        self.cum = np.concatenate([[0.0], np.cumsum(shares / total)])  # [L + 1]
        self.kind = kind
        self.table = table
        if kind == "measured" and table is None:
            raise ConfigError("cost='measured' needs a cost model table")

    def draft(self, e) -> np.ndarray:
        """Cost of one draft token at exit layer(s) e."""
        e = np.asarray(e, np.int64)
        if self.kind == "layers":
            return e.astype(np.float64)
        return float(self._seconds(1)) * (self.head + self.cum[e])

    def step(self, e, g) -> np.ndarray:
        e = np.asarray(e, np.int64)
        g = np.asarray(g, np.int64)
        if self.kind == "layers":
            return (self.L - e) + (g + 1) * e
        return g * self.draft(e) + self._seconds(g + 1)

    def ar(self) -> float:
        return float(self.L) if self.kind == "layers" else float(self._seconds(1))

    def probe(self, rows: int) -> float:
        """Cost of the final norm + LM head on ``rows`` hidden states (shadow tokens), in the
        same unit: the head's share of a forward of ``rows`` tokens."""
        if rows <= 0:
            return 0.0
        if self.kind == "layers":
            return self.head / max(1e-9, 1 - self.head) * self.L * rows
        return self.head * float(self._seconds(rows))

    def _seconds(self, tokens):
        """The measured forward cost of ``tokens`` tokens (kind 'measured' only)."""
        assert self.table is not None, "cost='measured' needs a cost model table"
        return self.table(tokens)


def expected_tokens(alpha, g) -> np.ndarray:
    """Committed tokens per step for acceptance rate α and γ drafts: (1 - α^(γ+1)) / (1 - α)."""
    a = np.asarray(alpha, np.float64)
    g = np.asarray(g, np.float64)
    a, g = np.broadcast_arrays(a, g)
    out = np.empty(a.shape)
    one = a >= 1.0
    out[one] = g[one] + 1
    an = a[~one]
    out[~one] = (1.0 - an ** (g[~one] + 1)) / (1.0 - an)
    return out


def step_costs(layers, cost: ExitCost, max_gamma: int) -> np.ndarray:
    """cost.step(layers[k], γ) for γ = 1..max_gamma, [K, max_gamma]: fixed once the candidate
    layers are, so per-step callers compute it once and pass it to :func:`select_exit`."""
    g = np.arange(1, int(max_gamma) + 1)
    return cost.step(np.asarray(layers, np.int64)[:, None], g[None, :])


def tpl_table(alpha, layers, cost: ExitCost, max_gamma: int, steps: np.ndarray | None = None) -> np.ndarray:
    """TPL[k, γ-1] = expected tokens / step cost for exit layers[k] and γ = 1..max_gamma
    (``steps``: the :func:`step_costs` of layers, at least max_gamma columns)."""
    g = np.arange(1, int(max_gamma) + 1)
    a = np.asarray(alpha, np.float64)[:, None]
    c = step_costs(layers, cost, max_gamma) if steps is None else steps[:, : int(max_gamma)]
    return expected_tokens(a, g[None, :]) / c


def select_exit(alpha, layers, cost: ExitCost, max_gamma: int, min_gain: float = 0.0, steps: np.ndarray | None = None):
    """(E, γ, predicted speedup over AR) maximising TPL, or (None, 0, best speedup) when no
    (E, γ) beats AR by more than ``min_gain`` (fraction). ``steps``: see :func:`tpl_table`."""
    layers = np.asarray(layers, np.int64)
    if layers.shape[0] == 0 or max_gamma < 1:
        return None, 0, 0.0
    t = tpl_table(alpha, layers, cost, max_gamma, steps)
    k, g = np.unravel_index(int(np.argmax(t)), t.shape)
    speedup = float(t[k, g] * cost.ar())
    if speedup <= 1.0 + min_gain:
        return None, 0, speedup
    return int(layers[k]), int(g) + 1, speedup


def feasible_layers(cost: ExitCost, max_gamma: int, min_gain: float = 0.0) -> np.ndarray:
    """Exit layers 1..L-1 that could beat AR at all (with α = 1): the only ones worth probing."""
    e = np.arange(1, cost.L)
    if e.shape[0] == 0:
        return e
    best = tpl_table(np.ones(e.shape[0]), e, cost, max_gamma).max(axis=1) * cost.ar()
    return e[best > 1.0 + min_gain]


class ProbeCredit:
    """Cost budget of shadow probing: every step earns ``fraction`` of its cost; a probe
    spends its own. One seed may go into debt; later probes and seeds wait until it is repaid."""

    def __init__(self, fraction: float):
        self.fraction = float(fraction)
        self.credit = 0.0
        self.spent = 0.0
        self.earned_steps = 0.0

    def earn(self, step_cost: float) -> None:
        self.credit += self.fraction * step_cost
        self.earned_steps += step_cost

    def can(self, cost: float) -> bool:
        return self.fraction > 0 and self.credit >= cost

    def spend(self, cost: float) -> None:
        self.credit -= cost
        self.spent += cost


# ----------------------------------------------------------------------------- the drafters
class _Req:
    __slots__ = ("root", "stats", "exit", "gamma", "draft_probs", "probe_layers", "steps", "history", "plan")

    def __init__(self, root: int, stats: LayerStats):
        self.root = root
        self.stats = stats
        self.exit = 0  # exit layer of the pending tree (0: no draft)
        self.gamma = 0  # drafts asked for
        self.draft_probs = np.zeros(0)  # probabilities of the drafted tokens
        self.probe_layers = None  # layers whose shadow tokens were requested
        self.steps = 0
        self.history: list[tuple[int, int, int]] = []  # (step, E or 0, drafted tokens)
        self.plan: tuple = ()  # (stats version, longest chain, exit, length): the last selection


class EarlyExitDrafter(Drafter):
    """Fixed exit layer E, fixed draft length γ (the ``early-exit`` baseline)."""

    name = "early-exit"
    needs_runner = "early_exit"
    DEFAULT_BUDGET: ClassVar[int] = 19
    OPTIONS: ClassVar[tuple[Option, ...]] = (
        Option("exit_layer", int, 24, "decoder layers used for drafting (1..L-1)", 1, 1024),
        Option("draft_len", int, 4, "draft tokens per step", 1, 1023),
    )
    #: history entries kept per drafter (for reports), oldest dropped
    HISTORY_CAP = 100_000

    def __init__(self, vocab_size: int, **options: Any):
        o = resolve_options(self.OPTIONS, options, self.name)
        super().__init__(vocab_size, **o)
        self.exit_layer = o["exit_layer"]
        self.draft_len = o["draft_len"]
        self.runner: EarlyExitRunner | None = None
        self.num_layers = 0
        self._req: dict[RequestId, _Req] = {}
        self.history: list[tuple[int, int, int, int]] = []  # finished requests' (request, step, E, drafted)
        self.finished = 0

    # ---------------------------------------------------------------- engine wiring
    def bind(self, runner: EarlyExitRunner) -> None:
        """Called by the engine before ``start`` with the runner of the current batch."""
        L = int(getattr(runner, "num_layers", 0) or 0)
        if L < 2:
            raise ConfigError(f"early-exit drafting needs a model with >= 2 decoder layers, got {L}")
        self._check_layers(L)
        self.runner, self.num_layers = runner, L

    def _check_layers(self, L: int) -> None:
        if not 1 <= self.exit_layer < L:
            raise ConfigError(
                f"exit_layer={self.exit_layer} is out of range for a model with {L} decoder layers: use 1..{L - 1}"
            )

    def _runner(self) -> EarlyExitRunner:
        if self.runner is None:
            raise ConfigError(
                f"algorithm {self.name!r} drafts with the target's own layers: the engine must "
                f"call drafter.bind(runner) first: the embedded engine and the SGLang adapter do; "
                f"the TGI adapter provides no early-exit runner (docs/del.md)"
            )
        return self.runner

    # ---------------------------------------------------------------- protocol
    def start(self, rid, context_ids, context_topk=None):
        self._runner()
        ids = np.asarray(context_ids)
        if ids.ndim != 1 or ids.shape[0] == 0:
            raise ConfigError("context_ids must be a non-empty 1-D sequence of token ids")
        self._req[rid] = _Req(int(ids[-1]), self._new_stats())

    def _new_stats(self) -> LayerStats:
        return LayerStats(self.num_layers)

    def _plan(self, rid, st: _Req, budget: int) -> tuple[int, int]:
        """(exit layer, draft length) of this step; (0, 0): no speculation."""
        g = min(self.draft_len, budget - 1)
        return (self.exit_layer, g) if g > 0 else (0, 0)

    def _threshold(self, st: _Req, e: int) -> float:
        return 0.0

    def propose(self, rids, budgets):
        trees: list[DraftTree] = []
        plans = []
        for rid, b in zip(rids, budgets):
            st = self._req[rid]
            e, g = self._plan(rid, st, int(b))
            st.exit, st.gamma, st.draft_probs = e, g, np.zeros(0)
            plans.append((e, g))
        drafting = [i for i, (e, g) in enumerate(plans) if g > 0]
        toks: dict[int, list[int]] = {i: [] for i in drafting}
        probs: dict[int, list[float]] = {i: [] for i in drafting}
        if drafting:
            runner = self._runner()
            cur = np.array([self._req[rids[i]].root for i in drafting], np.int64)
            active = list(drafting)
            thr = {i: self._threshold(self._req[rids[i]], plans[i][0]) for i in drafting}
            step = 0
            while active:  # loops over draft positions (<= 18), vectorised over requests
                ex = np.array([plans[i][0] for i in active], np.int64)
                out, p = runner.draft([rids[i] for i in active], cur, step, ex)
                nxt, nxt_tok = [], []
                for j, i in enumerate(active):
                    toks[i].append(int(out[j]))
                    probs[i].append(float(p[j]))
                    if len(toks[i]) < plans[i][1] and p[j] >= thr[i]:
                        nxt.append(i)
                        nxt_tok.append(int(out[j]))
                active, cur = nxt, np.array(nxt_tok, np.int64)
                step += 1
        for k, rid in enumerate(rids):
            st = self._req[rid]
            if k in toks:
                pr = np.asarray(probs[k], np.float64)
                st.draft_probs = pr
                trees.append(DraftTree.chain(st.root, toks[k], np.cumprod(pr).astype(np.float32)))
            else:
                trees.append(DraftTree.single(st.root))
            st.history.append((st.steps, st.exit, len(toks.get(k, ()))))  # exit is 0 when not drafting
        return trees

    def observe(self, rid, tree, accepted, target_topk=None):
        st = self._req[rid]
        acc = np.asarray(accepted)
        st.root = int(acc[-1])
        st.steps += 1
        self._learn(rid, st, len(tree) - 1, acc.shape[0] - 1)

    def _learn(self, rid, st: _Req, drafted: int, accepted: int) -> None:
        pass

    def finish(self, rid):
        st = self._req.pop(rid, None)
        if st is not None:
            self.finished += 1
            self.history.extend((self.finished - 1, s, e, g) for s, e, g in st.history)
            if len(self.history) > self.HISTORY_CAP:
                del self.history[: len(self.history) - self.HISTORY_CAP]

    def active_requests(self) -> int:
        return len(self._req)

    # ---------------------------------------------------------------- reports
    def bench_report(self) -> dict:
        """Chosen exit layer and draft length over time, per finished request (in finishing
        order): run-length segments [first step, steps, E (0 = no speculation), mean drafted]."""
        h = np.array(self.history, np.int64).reshape(-1, 4)
        spec = h[h[:, 2] > 0]
        counts = {int(e): int(c) for e, c in zip(*np.unique(spec[:, 2], return_counts=True))} if spec.shape[0] else {}
        timeline = []
        for r in np.unique(h[:, 0]):
            x = h[h[:, 0] == r]
            cut = np.flatnonzero(np.diff(x[:, 2])) + 1  # segments of equal E
            starts = np.concatenate([[0], cut])
            ends = np.concatenate([cut, [x.shape[0]]])
            timeline.append(
                [
                    [int(x[a, 1]), int(b - a), int(x[a, 2]), round(float(x[a:b, 3].mean()), 2)]
                    for a, b in zip(starts, ends)
                ]
            )
        return {
            "steps": int(h.shape[0]),
            "speculative_steps": int(spec.shape[0]),
            "exit_layer_counts": counts,
            "mean_draft_len": float(spec[:, 3].mean()) if spec.shape[0] else 0.0,
            "timeline": timeline,
        }


class DELDrafter(EarlyExitDrafter):
    """DEL: exit layer and draft length chosen online from shadow-token statistics."""

    name = "del"
    DEFAULT_BUDGET: ClassVar[int] = 19
    OPTIONS: ClassVar[tuple[Option, ...]] = (
        Option("max_draft", int, 18, "longest draft chain γ", 1, 1023),
        Option("decay", float, 0.95, "per-position decay ω of the match/mismatch statistics", 0.0, 1.0),
        Option(
            "seed_tokens",
            int,
            32,
            "last prompt positions whose shadow tokens seed cold statistics (0 = no seeding)",
            0,
            4096,
        ),
        Option(
            "candidate_layers",
            str,
            "",
            "comma-separated exit layers to consider; empty = the deepest "
            "probe_layers layers (stride probe_stride) that could beat AR at all under the cost model",
        ),
        Option("probe_layers", int, 4, "candidate exit layers probed with shadow tokens", 1, 1024),
        Option("probe_stride", int, 2, "spacing of automatically chosen candidate layers", 1, 1024),
        Option(
            "probe_budget",
            float,
            0.005,
            "fraction of the step time that shadow probing may use (0 = probe only the prompt seed)",
            0.0,
            1.0,
        ),
        Option("min_gain", float, 0.05, "speculate only when the predicted speedup over AR exceeds this", 0.0, 10.0),
        Option(
            "cost",
            str,
            "measured",
            "cost model: 'measured' (the engine's forward-cost table and the "
            "model's compute shares) or 'layers' (the paper's (L-E) + (γ+1)E layer count)",
            choices=("measured", "layers"),
        ),
        Option(
            "cost_model",
            str,
            "cpu",
            "measured cost table (drafters/cost_models/NAME.json; `specplug calibrate` writes one)",
        ),
        Option(
            "dynamic_exit",
            bool,
            True,
            "stop drafting below the midpoint of the mean confidences on matches and mismatches",
        ),
    )

    def __init__(self, vocab_size: int, **options: Any):
        o = resolve_options(self.OPTIONS, options, self.name)
        Drafter.__init__(self, vocab_size, **o)
        self.max_draft, self.decay, self.seed_tokens = o["max_draft"], o["decay"], o["seed_tokens"]
        self.probe_layers, self.probe_stride = o["probe_layers"], o["probe_stride"]
        self.probe_budget, self.min_gain = o["probe_budget"], o["min_gain"]
        self.cost_kind, self.dynamic_exit = o["cost"], o["dynamic_exit"]
        self.table = default_cost_model(o["cost_model"])
        self.explicit_layers = self._parse_layers(o["candidate_layers"])
        self.exit_layer, self.draft_len = 0, 0
        self.runner = None
        self.num_layers = 0
        self._req = {}
        self.history = []
        self.finished = 0
        self.cost: ExitCost | None = None
        self._steps = np.zeros((0, 0))  # step_costs of the candidates (set in bind)
        self._ar = 0.0
        self.candidates = np.zeros(0, np.int64)
        self.credit = ProbeCredit(self.probe_budget)
        self.prior: LayerStats | None = None  # statistics carried across requests

    @staticmethod
    def _parse_layers(text: str) -> np.ndarray | None:
        text = str(text).strip()
        if not text:
            return None
        try:
            vals = sorted({int(x) for x in text.split(",") if x.strip()})
        except ValueError:
            raise ConfigError(
                f"option 'candidate_layers' of algorithm 'del' must be comma-separated layer "
                f"numbers, e.g. '20,24,27', got {text!r}"
            ) from None
        return np.array(vals, np.int64)

    def bind(self, runner: EarlyExitRunner) -> None:
        L = int(getattr(runner, "num_layers", 0) or 0)
        if L < 2:
            raise ConfigError(f"early-exit drafting needs a model with >= 2 decoder layers, got {L}")
        if self.explicit_layers is not None:
            bad = self.explicit_layers[(self.explicit_layers < 1) | (self.explicit_layers >= L)]
            if bad.shape[0]:
                raise ConfigError(
                    f"candidate_layers {bad.tolist()} out of range for a model with {L} decoder layers: use 1..{L - 1}"
                )
        if self.num_layers != L or self.cost is None:
            head, shares = runner.cost_profile()
            self.cost = ExitCost(L, head, shares, self.cost_kind, self.table)
            if self.explicit_layers is not None:
                cand = self.explicit_layers
            else:
                feas = feasible_layers(self.cost, self.max_draft, self.min_gain)[::-1]  # deepest first
                cand = np.sort(feas[:: max(1, self.probe_stride)][: self.probe_layers])
            self.candidates = np.asarray(cand, np.int64)
            self.prior = None
            # per-step selection only needs alpha: the cost side is fixed from here on
            self._steps = step_costs(self.candidates, self.cost, self.max_draft)
            self._ar = self.cost.ar()
        self.runner, self.num_layers = runner, L
        if self.candidates.shape[0] and self.seed_tokens > 0 and self._cold() and self._seed_paid():
            runner.request_prompt_shadow(self.candidates, self.seed_tokens)

    def _cost(self) -> ExitCost:
        assert self.cost is not None, "bind() sets the cost model"
        return self.cost

    def _cold(self) -> bool:
        """No usable statistics yet for the candidates (the prior is empty or faded)."""
        return self.prior is None or float(self.prior.weight(self.candidates).min()) < 1.0

    def _seed_paid(self) -> bool:
        """A prompt seed may go into debt once; the next waits until probing credit repaid it
        (else a model where no layer pays re-seeds every request: ~2-5% of a short one)."""
        return self.credit.credit >= 0.0 or self.credit.fraction == 0.0

    def _new_stats(self) -> LayerStats:
        return self.prior.copy() if self.prior is not None else LayerStats(self.num_layers, self.decay)

    def start(self, rid, context_ids, context_topk=None):
        super().start(rid, context_ids, context_topk)
        if self.candidates.shape[0] == 0:
            return
        sh = self._runner().prompt_shadow(rid)
        if sh is not None and sh.tokens.shape[1]:
            self._req[rid].stats.update(sh.layers, sh.hits, sh.probs)
            rows = sh.tokens.shape[0] * sh.tokens.shape[1] + sh.tokens.shape[1]
            self.credit.spend(self._cost().probe(rows))

    def _plan(self, rid, st: _Req, budget: int) -> tuple[int, int]:
        st.probe_layers = None
        if self.candidates.shape[0] == 0:
            self.credit.earn(self._ar)
            return 0, 0
        gmax = min(self.max_draft, budget - 1)
        cost = self._cost()
        if st.plan[:2] == (st.stats.version, gmax):  # nothing learnt since: the same choice
            e, g = st.plan[2:]
        else:
            e, g, _ = (
                select_exit(st.stats.alpha(self.candidates), self.candidates, cost, gmax, self.min_gain, self._steps)
                if gmax >= 1
                else (None, 0, 0.0)
            )
            e, g = (0, 0) if e is None else (e, g)
            st.plan = (st.stats.version, gmax, e, g)
        step_cost = float(self._steps[np.searchsorted(self.candidates, e), g - 1]) if e else self._ar
        self.credit.earn(step_cost)
        probe = self.candidates[self.candidates != e]
        # shadow rows: K layers x (accepted + 1) positions, at most g + 1 of them
        if probe.shape[0] and self.credit.can(cost.probe(probe.shape[0] * (g + 1))):
            st.probe_layers = probe
            self._runner().request_shadow(rid, probe)
        return e, g

    def _threshold(self, st: _Req, e: int) -> float:
        return st.stats.threshold(e) if self.dynamic_exit else 0.0

    def _learn(self, rid, st: _Req, drafted: int, accepted: int) -> None:
        if drafted > 0 and st.exit:
            # the exit layer's own statistics come free from the verification: accepted
            # drafts matched, the first rejected one mismatched
            n = min(drafted, accepted + 1)
            hits = np.arange(n) < accepted
            st.stats.update([st.exit], hits[None, :], st.draft_probs[None, :n])
        if st.probe_layers is not None:
            sh = self.runner.shadow(rid)
            if sh is not None and sh.tokens.shape[1]:
                st.stats.update(sh.layers, sh.hits, sh.probs)
                self.credit.spend(self.cost.probe(sh.tokens.shape[0] * sh.tokens.shape[1]))
            st.probe_layers = None

    def finish(self, rid):
        st = self._req.get(rid)
        if st is not None:
            self.prior = st.stats.copy()
        super().finish(rid)

    def bench_report(self) -> dict:
        rep = super().bench_report()
        rep.update(
            {
                "candidate_layers": self.candidates.tolist(),
                "cost": self.cost_kind,
                "probe_cost_fraction": (
                    self.credit.spent / self.credit.earned_steps if self.credit.earned_steps > 0 else 0.0
                ),
            }
        )
        if self.prior is not None and self.candidates.shape[0]:
            rep["alpha"] = {int(e): float(a) for e, a in zip(self.candidates, self.prior.alpha(self.candidates))}
        if self.cost is not None:
            rep["feasible_layers_at_alpha_1"] = feasible_layers(self.cost, self.max_draft, self.min_gain).tolist()
        return rep
