"""``specplug bench-drafters``: drafting cost and memory of model-free drafters, no model.

A synthetic workload stands in for the engine: each request is a code-like token stream
(snippets from a shared Zipf-weighted library, with per-request identifiers and noise,
vocab 49152). The "target" accepts draft tokens that match the stream (greedy) and
reports top-k ids at every tree node: the stream's next token first on the matched path,
then a fixed pseudo-random "bigram" set per token. The batch is kept full: finished
requests are replaced by new ones (so starts and finishes are part of the run).

Reported per algorithm: propose and observe cost in us per request-step (the batched
call's time / batch size; p50 and p99 over steps) and in ms per step, mean accepted tokens
per step, bytes of per-request state and of shared structures, and RSS after 1k, 5k and 10k
requests (start / propose / observe / finish) to show that memory stays flat.

Grids: ``--batches 1,16,64,256 --budgets 16,64 --draft-threads 1,2`` measure every point
(the memory run once per algorithm, at the largest thread count). ``--policy`` also drives
each algorithm through a :class:`~specplug.drafters.session.DraftSession` with the load-aware
budget policy (cost model ``--cost-model``, default the shipped ``cpu``), once with the
policy's draft caps and once without, and reports host drafting time per step (session
propose + observe) against the modeled verify time of the step the policy chose, MAT, and
the mean chosen budget and drafted tree size.
"""

from __future__ import annotations

import gc
import json
import os
import time

import numpy as np

from specplug import peers  # noqa: F401 (registers the benchmark peers, e.g. sglang-ngram)
from specplug.drafters.feedback import Feedback, TopK, offsets_of

DEFAULT_ALGORITHMS = "racer,token-recycling,suffix,pld"


def add_arguments(p):
    p.add_argument(
        "--algorithms",
        default=DEFAULT_ALGORITHMS,
        help="comma-separated algorithm names; "
        "NAME[static] / NAME[dynamic] pick the tree mode of racer and token-recycling",
    )
    p.add_argument("--batch", type=int, default=256, help="concurrent requests per step")
    p.add_argument("--budget", type=int, default=64, help="tree budget (nodes including the root)")
    p.add_argument("--steps", type=int, default=60, help="timed steps")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first (compilation, caches)")
    p.add_argument("--vocab", type=int, default=49152)
    p.add_argument("--topk", type=int, default=8, help="top-k width the simulated target reports")
    p.add_argument("--requests", type=int, default=10000, help="requests in the memory run (0: skip it)")
    p.add_argument("--memory-batch", type=int, default=64, help="concurrent requests in the memory run")
    p.add_argument(
        "--options",
        action="append",
        default=[],
        metavar="ALGO=JSON",
        help="options for one algorithm, e.g. racer='{\"global_cache\": true}'",
    )
    p.add_argument("--batches", metavar="B,B,...", help="batch sizes to measure (overrides --batch), e.g. 1,16,64,256")
    p.add_argument("--budgets", metavar="N,N,...", help="tree budgets to measure (overrides --budget), e.g. 16,64")
    p.add_argument(
        "--draft-threads",
        metavar="T,T,...",
        help="draft thread counts to measure (each algorithm's draft_threads option; default: its own default)",
    )
    p.add_argument(
        "--policy",
        action="store_true",
        help="also run each algorithm under the load-aware budget policy (with and without draft caps)",
    )
    p.add_argument(
        "--cost-model", default="cpu", help="the policy's cost model: a shipped name or a JSON file (default cpu)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")


def _int_list(text, default: int, what: str) -> list[int]:
    from specplug.drafters.errors import ConfigError

    if text is None:
        return [int(default)]
    try:
        vals = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        vals = []
    if not vals or min(vals) < 1:
        raise ConfigError(f"{what} must be comma-separated positive integers, e.g. 1,16,64; got {text!r}")
    return vals


# --------------------------------------------------------------------------- workload
class SyntheticWorkload:
    """Code-like token streams: repeated snippets with per-request identifiers and noise."""

    def __init__(self, vocab: int = 49152, seed: int = 0, n_snippets: int = 2000, topk: int = 8):
        self.vocab, self.topk = int(vocab), int(topk)
        self.rng = np.random.default_rng(seed)
        ranks = np.arange(1, vocab + 1, dtype=np.float64)
        self._token_p = (1.0 / ranks**1.1) / np.sum(1.0 / ranks**1.1)
        self._perm = self.rng.permutation(vocab).astype(np.int64)
        self.snippets = [self._tokens(int(self.rng.integers(4, 40))) for _ in range(n_snippets)]
        w = 1.0 / np.arange(1, n_snippets + 1) ** 0.8
        self._snip_p = w / w.sum()
        # the simulated target's fixed "bigram" candidates per token
        self._alt_mul = (np.arange(1, topk + 1, dtype=np.int64) * 2654435761) % vocab

    def _tokens(self, n: int) -> np.ndarray:
        return self._perm[self.rng.choice(self.vocab, size=n, p=self._token_p)]

    def stream(self, length: int) -> np.ndarray:
        """One request's tokens (prompt and continuation)."""
        topic = self.rng.choice(len(self.snippets), size=24, p=self._snip_p)
        idents = self._tokens(6)
        parts, n = [], 0
        while n < length:
            s = self.snippets[int(self.rng.choice(topic))].copy()
            hole = self.rng.random(s.shape[0]) < 0.15
            s[hole] = idents[self.rng.integers(0, idents.shape[0], int(hole.sum()))]
            noise = self.rng.random(s.shape[0]) < 0.03
            s[noise] = self.rng.integers(0, self.vocab, int(noise.sum()))
            parts.append(s)
            n += s.shape[0]
        return np.concatenate(parts)[:length].astype(np.int64)

    def alternatives(self, tokens: np.ndarray) -> np.ndarray:
        """[..., k] deterministic candidate ids per token (the target's top-k off the path)."""
        return (tokens[..., None].astype(np.int64) * 40503 + self._alt_mul) % self.vocab


def verify_batch(
    rids, trees, streams: np.ndarray, pos: np.ndarray, work: SyntheticWorkload, probs: bool = False, topk: bool = True
):
    """Greedy verification against the streams, as an engine reports it: (the step's
    :class:`Feedback`, accepted draft tokens per request [B]).

    ``topk``: the feedback carries the target's top-k at every node (the stream's next
    token first on the matched path, fixed alternatives elsewhere); ``probs``: with
    synthetic probabilities: on the stream's path the next token gets 0.8 (the stream is
    predictable there), off it the candidates get 0.3, 0.2, 0.1, ... (decaying with rank)."""
    b = len(trees)
    sizes = np.fromiter((len(t) for t in trees), np.int64, b)
    w = int(sizes.max())
    tok = np.zeros((b, w), np.int64)
    par = np.zeros((b, w), np.int64)
    dep = np.zeros((b, w), np.int64)
    for i, t in enumerate(trees):
        n = len(t)
        tok[i, :n] = t.tokens
        par[i, :n] = np.maximum(t.parents, 0)
        dep[i, :n] = t.depth
    valid = np.arange(w)[None, :] < sizes[:, None]
    rows = np.arange(b)[:, None]
    idx = np.minimum(pos[:, None] + dep, streams.shape[1] - 1)
    on = valid & (tok == streams[rows, idx])
    on[:, 0] = True
    for _ in range(int(dep.max())):  # propagate "parent on path" by depth
        on = on & on[rows, par]
    acc = np.where(on, dep, 0).max(axis=1)
    cols = pos[:, None] + 1 + np.arange(int(acc.max()) + 1)[None, :]
    taken = np.arange(cols.shape[1])[None, :] <= acc[:, None]
    accepted = streams[np.broadcast_to(rows, cols.shape)[taken], cols[taken]].astype(np.int32)
    flat_topk = None
    if topk:
        nxt = streams[rows, np.minimum(idx + 1, streams.shape[1] - 1)]
        ids = work.alternatives(tok)
        ids[:, :, 0] = np.where(on, nxt, ids[:, :, 0])
        pr = None
        if probs:
            k = ids.shape[2]
            off = (0.3 * 0.66 ** np.arange(k)).astype(np.float32)
            pr = np.broadcast_to(off, ids.shape).copy()
            pr[:, :, 0] = np.where(on, 0.8, off[0])
            pr = pr[valid]
        flat_topk = TopK.of(ids[valid], pr)
    return Feedback(list(rids), list(trees), accepted, offsets_of(acc + 1), flat_topk), acc


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _Driver:
    """Keeps ``batch`` requests running against one drafter; replaces finished ones."""

    def __init__(self, drafter, work: SyntheticWorkload, batch: int, prompt_len=(128, 512), gen_len=(64, 256)):
        self.d, self.work, self.batch = drafter, work, batch
        self.prompt_len, self.gen_len = prompt_len, gen_len
        self.max_len = prompt_len[1] + gen_len[1] + 2
        self.streams = np.zeros((batch, self.max_len + 80), np.int64)
        self.pos = np.zeros(batch, np.int64)
        self.end = np.zeros(batch, np.int64)
        self.rids = [None] * batch
        self.started = self.finished = 0
        self.accepted_tokens = self.steps = 0
        for i in range(batch):
            self._admit(i)

    def _admit(self, i):
        rng = self.work.rng
        p = int(rng.integers(*self.prompt_len))
        g = int(rng.integers(*self.gen_len))
        s = self.work.stream(p + g + 1)
        self.streams[i] = 0
        self.streams[i, : s.shape[0]] = s
        self.pos[i] = p - 1  # index of the root (last prompt token)
        self.end[i] = p + g
        rid = self.started
        self.started += 1
        self.rids[i] = rid
        ctx = s[:p]
        topk = None
        if self.d.uses_target_topk:
            ids = self.work.alternatives(ctx[:-1])
            ids[:, 0] = ctx[1:]
            topk = TopK.of(ids)
        self._start(rid, ctx, topk)

    def _start(self, rid, ctx, topk):
        self.d.start(rid, ctx, topk)

    def _finish(self, rid):
        self.d.finish(rid)

    def _replace_finished(self):
        for i in np.flatnonzero(self.pos >= self.end).tolist():
            self._finish(self.rids[i])
            self.finished += 1
            self._admit(i)

    def step(self, budget: int):
        """One engine step; returns (propose seconds, observe seconds)."""
        rids = list(self.rids)
        t0 = time.perf_counter()
        trees = self.d.propose(rids, [budget] * len(rids))
        t1 = time.perf_counter()
        feedback, acc = verify_batch(
            rids, trees, self.streams, self.pos, self.work, probs=self.d.feedback_probs, topk=self.d.uses_target_topk
        )
        t2 = time.perf_counter()
        self.d.observe_batch(feedback)
        t3 = time.perf_counter()
        self.pos += acc + 1
        self.accepted_tokens += int(acc.sum()) + len(rids)
        self.steps += len(rids)
        self._replace_finished()
        return t1 - t0, t3 - t2, trees

    def close(self):
        for rid in self.rids:
            self._finish(rid)


class _SessionDriver(_Driver):
    """The same workload through a :class:`DraftSession` with a budget policy: what an engine
    runs (the session's propose, check, policy cut and observe are timed as host work)."""

    def __init__(self, drafter, work, batch, policy, **kw):
        from specplug.drafters.session import DraftSession

        self.session = DraftSession(drafter, policy=policy)
        self.drafted_nodes = 0  # what the drafter was asked to grow, before the policy's cut
        inner = drafter.propose

        def counted(rids, budgets):
            trees = inner(rids, budgets)
            self.drafted_nodes += sum(len(t) for t in trees)
            return trees

        drafter.propose = counted  # an instance attribute: this drafter only
        super().__init__(drafter, work, batch, **kw)

    def _start(self, rid, ctx, topk):
        self.session.start(rid, ctx, topk)

    def _finish(self, rid):
        self.session.finish(rid)

    def step(self, budget: int):
        """One engine step; returns (host seconds, the verified trees)."""
        from specplug.drafters.session import RequestView

        rids = list(self.rids)
        streams, pos = self.streams, self.pos
        views = [
            RequestView(rid, int(pos[i]) + 1, int(streams[i, pos[i]]), lambda i=i: streams[i, : pos[i] + 1])
            for i, rid in enumerate(rids)
        ]
        step = self.session.propose(views, budget)
        feedback, acc = verify_batch(
            rids, step.trees, streams, pos, self.work, probs=self.d.feedback_probs, topk=self.d.uses_target_topk
        )
        ids = probs = None
        if feedback.topk is not None:
            sizes = np.fromiter((len(t) for t in step.trees), np.int64, len(rids))
            keep = np.arange(int(sizes.max()))[None, :] < sizes[:, None]
            ids = np.full((*keep.shape, feedback.topk.k), -1, np.int32)
            ids[keep] = feedback.topk.ids
            if feedback.topk.probs is not None:
                probs = np.full(ids.shape, -1.0, np.float32)
                probs[keep] = feedback.topk.probs
        observe_s = self.session.observe(rids, feedback.accepted, acc + 1, ids, probs)
        self.session.end_step()
        self.pos += acc + 1
        self.accepted_tokens += int(acc.sum()) + len(rids)
        self.steps += len(rids)
        self._replace_finished()
        return step.draft_s + observe_s, step.trees


# --------------------------------------------------------------------------- measurement
def _percentiles(values, scale: float = 1.0) -> tuple[float, float]:
    return float(np.percentile(values, 50)) * scale, float(np.percentile(values, 99)) * scale


def bench_algorithm(
    name: str, options: dict, args, *, batch: int | None = None, budget: int | None = None, memory: bool = True
) -> dict:
    """One (algorithm, batch, budget) point; ``options`` may carry ``draft_threads``."""
    from specplug.bench import split_variant
    from specplug.drafters import registry

    batch = int(args.batch if batch is None else batch)
    budget = int(args.budget if budget is None else budget)
    label = _label(name, options)
    name, options = split_variant(name, options)
    work = SyntheticWorkload(args.vocab, args.seed, topk=args.topk)
    drafter = registry.create(name, args.vocab, options)
    drv = _Driver(drafter, work, batch)
    prop, obs = [], []
    for s in range(args.warmup + args.steps):
        tp, to, trees = drv.step(budget)
        if s >= args.warmup:
            prop.append(tp)
            obs.append(to)
    prop_s, obs_s = np.array(prop), np.array(obs)
    both = prop_s + obs_s
    mat = drv.accepted_tokens / max(drv.steps, 1)
    mean_nodes = float(np.mean([len(t) for t in trees]))
    per_req = [n for n in (drafter.request_nbytes(r) for r in drv.rids) if n is not None]
    glob = drafter.global_nbytes()
    drv.close()
    leaked = drafter.active_requests()
    us = 1e6 / batch
    out = {
        "algorithm": label,
        "options": {k: v for k, v in options.items() if k != "draft_threads"},
        "batch": batch,
        "budget": budget,
        "threads": int(getattr(getattr(drafter, "threads", None), "n", 1)),
        "propose_us_p50": _percentiles(prop_s, us)[0],
        "propose_us_p99": _percentiles(prop_s, us)[1],
        "observe_us_p50": _percentiles(obs_s, us)[0],
        "observe_us_p99": _percentiles(obs_s, us)[1],
        "total_us_p50": _percentiles(both, us)[0],
        "total_us_p99": _percentiles(both, us)[1],
        "propose_ms_step_p50": _percentiles(prop_s, 1e3)[0],
        "propose_ms_step_p99": _percentiles(prop_s, 1e3)[1],
        "observe_ms_step_p50": _percentiles(obs_s, 1e3)[0],
        "observe_ms_step_p99": _percentiles(obs_s, 1e3)[1],
        "mean_accepted_per_step": mat,
        "mean_tree_nodes": mean_nodes,
        "bytes_per_request": float(np.mean(per_req)) if per_req else None,
        "global_bytes": glob,
        "active_after_finish": leaked,
    }
    if memory and args.requests > 0:
        out["rss_mb"] = memory_run(name, options, args)
    return out


def _label(name: str, options: dict) -> str:
    from specplug.bench import split_variant
    from specplug.drafters import registry

    base, opts = split_variant(name, options)
    return registry.get(base).name + (f"[{opts['tree']}]" if "tree" in opts else "")


def bench_policy(name: str, options: dict, args, *, batch: int, budget: int, cap: bool) -> dict:
    """One algorithm through a session with the load-aware policy: host time per step (the
    session's propose + observe) against the modeled verify time of the chosen step."""
    from specplug.bench import split_variant
    from specplug.drafters import registry
    from specplug.drafters.budget import BudgetPolicy, load_cost_model

    cost = load_cost_model(args.cost_model)
    label = _label(name, options)
    name, options = split_variant(name, options)
    work = SyntheticWorkload(args.vocab, args.seed, topk=args.topk)
    drafter = registry.create(name, args.vocab, options)
    policy = BudgetPolicy(cost, cap_drafts=cap)
    drv = _SessionDriver(drafter, work, batch, policy)
    host, model, chosen = [], [], []
    drafted0 = steps0 = acc0 = 0
    for s in range(args.warmup + args.steps):
        if s == args.warmup:
            drafted0, steps0, acc0 = drv.drafted_nodes, drv.steps, drv.accepted_tokens
        h, trees = drv.step(budget)
        if s >= args.warmup:
            width = max(len(t) for t in trees)
            host.append(h)
            model.append(float(cost.step(batch, [width])[0]) if policy.padded else float(cost(sum(map(len, trees)))))
            chosen.append(float(np.mean([len(t) for t in trees])))
    steps = drv.steps - steps0
    drv.close()
    host_a, model_a = np.array(host), np.array(model)
    return {
        "algorithm": label,
        "options": {k: v for k, v in options.items() if k != "draft_threads"},
        "batch": batch,
        "budget": budget,
        "threads": int(getattr(getattr(drafter, "threads", None), "n", 1)),
        "draft_caps": cap,
        "cost_model": args.cost_model,
        "host_ms_step_p50": _percentiles(host_a, 1e3)[0],
        "host_ms_step_p99": _percentiles(host_a, 1e3)[1],
        "model_ms_step_p50": _percentiles(model_a, 1e3)[0],
        "host_share_of_step": float(np.sum(host_a) / np.sum(model_a)),
        "mean_accepted_per_step": (drv.accepted_tokens - acc0) / max(steps, 1),
        "mean_chosen_budget": float(np.mean(chosen)),
        "mean_drafted_nodes": (drv.drafted_nodes - drafted0) / max(steps, 1),
        "active_after_finish": drafter.active_requests(),
    }


def memory_run(name: str, options: dict, args) -> dict:
    """RSS (MiB) after 1k, 5k and 10k requests of start / propose / observe / finish."""
    from specplug.bench import split_variant
    from specplug.drafters import registry

    name, options = split_variant(name, options)
    work = SyntheticWorkload(args.vocab, args.seed + 1, topk=args.topk)
    drafter = registry.create(name, args.vocab, options)
    drv = _Driver(drafter, work, args.memory_batch, prompt_len=(64, 256), gen_len=(16, 48))
    marks = sorted({m for m in (1000, 5000, 10000, args.requests) if m <= args.requests})
    rss = {}
    while marks:
        drv.step(args.budget)
        if drv.finished >= marks[0]:
            gc.collect()
            rss[str(marks.pop(0))] = round(_rss_bytes() / 2**20, 1)
    drv.close()
    rss["active_after_finish"] = drafter.active_requests()
    return rss


def _parse_options(items) -> dict:
    from specplug.drafters.errors import ConfigError
    from specplug.drafters.registry import load_options

    out = {}
    for item in items:
        algo, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"--options expects ALGO=JSON, got {item!r}")
        out[algo.strip()] = load_options(text)
    return out


def format_table(results) -> str:
    head = (
        f"{'algorithm':<16} {'B':>4} {'N':>3} {'T':>2} {'propose p50/p99 us':>19} {'observe p50/p99 us':>19} "
        f"{'step p50 ms':>11} {'MAT':>5} {'nodes':>5} {'B/request':>10} {'global B':>10}  RSS MiB @1k/5k/10k"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        rss = r.get("rss_mb") or {}
        rss_s = "/".join(str(rss.get(k, "-")) for k in ("1000", "5000", "10000"))
        bpr = "-" if r["bytes_per_request"] is None else f"{r['bytes_per_request']:.0f}"
        glob = "-" if r["global_bytes"] is None else f"{r['global_bytes']:.0f}"
        step_ms = r.get("propose_ms_step_p50", 0.0) + r.get("observe_ms_step_p50", 0.0)
        lines.append(
            f"{r['algorithm']:<16.24} {r.get('batch', 0):>4} {r.get('budget', 0):>3} {r.get('threads', 1):>2} "
            f"{r['propose_us_p50']:>9.2f}/{r['propose_us_p99']:<9.2f} "
            f"{r['observe_us_p50']:>9.2f}/{r['observe_us_p99']:<9.2f} {step_ms:>11.3f} "
            f"{r['mean_accepted_per_step']:>5.2f} {r['mean_tree_nodes']:>5.1f} {bpr:>10} {glob:>10}  {rss_s}"
        )
    return "\n".join(lines)


def format_policy_table(results) -> str:
    head = (
        f"{'algorithm':<16} {'B':>4} {'N':>3} {'T':>2} {'caps':>4} {'host p50/p99 ms':>17} {'model ms':>9} "
        f"{'host %':>7} {'MAT':>5} {'chosen':>6} {'drafted':>7}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(
            f"{r['algorithm']:<16.24} {r['batch']:>4} {r['budget']:>3} {r['threads']:>2} "
            f"{'on' if r['draft_caps'] else 'off':>4} {r['host_ms_step_p50']:>8.3f}/{r['host_ms_step_p99']:<8.3f} "
            f"{r['model_ms_step_p50']:>9.2f} {100 * r['host_share_of_step']:>6.2f}% "
            f"{r['mean_accepted_per_step']:>5.2f} {r['mean_chosen_budget']:>6.2f} {r['mean_drafted_nodes']:>7.2f}"
        )
    return "\n".join(lines)


def run(args) -> int:
    from specplug.bench import split_variant
    from specplug.drafters import registry
    from specplug.drafters.errors import ConfigError

    opts = _parse_options(args.options)
    names = [n.strip() for n in args.algorithms.split(",") if n.strip()]
    # unknown names / tree modes fail here, before any work
    bases = {n: registry.get(split_variant(n, {})[0]).name for n in names}
    unused = [k for k in opts if k not in names and k not in bases.values()]
    if unused:
        raise ConfigError(
            f"--options for {', '.join(map(repr, unused))}, which is not in --algorithms "
            f"({', '.join(names)}): key options by an algorithm's name (all its variants) or "
            f"by the exact variant, e.g. racer='{{...}}' or 'racer[dynamic]={{...}}'"
        )
    batches = _int_list(args.batches, args.batch, "--batches")
    budgets = _int_list(args.budgets, args.budget, "--budgets")
    thread_counts: list[int | None] = (
        list(_int_list(args.draft_threads, 1, "--draft-threads")) if args.draft_threads else [None]
    )
    if args.policy:
        load_cost_model_checked(args.cost_model)
    results, policy_results = [], []
    for name in names:
        # the exact variant's options over the base name's
        merged = {**opts.get(bases[name], {}), **(opts.get(name, {}) if name != bases[name] else {})}
        for t in thread_counts:
            o = merged if t is None else {**merged, "draft_threads": t}
            for batch in batches:
                for budget in budgets:
                    last = t == thread_counts[-1] and batch == batches[-1] and budget == budgets[-1]
                    results.append(bench_algorithm(name, o, args, batch=batch, budget=budget, memory=last))
                    print(format_table(results[-1:]).splitlines()[-1], flush=True)
        if args.policy:
            for t in thread_counts:
                o = merged if t is None else {**merged, "draft_threads": t}
                for batch in batches:
                    for budget in budgets:
                        for cap in (False, True):
                            policy_results.append(bench_policy(name, o, args, batch=batch, budget=budget, cap=cap))
                            print(format_policy_table(policy_results[-1:]).splitlines()[-1], flush=True)
    print()
    print(format_table(results))
    if policy_results:
        print()
        print(f"under the load-aware policy (cost model {args.cost_model}; host = session propose + observe per step)")
        print(format_policy_table(policy_results))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(
                {
                    "results": results,
                    "policy": policy_results,
                    "args": {k: v for k, v in vars(args).items() if not k.startswith("_")},
                },
                f,
                indent=2,
                default=str,
            )
    return 0


def load_cost_model_checked(source: str):
    """The policy's cost model, read once up front so a bad name fails before any work."""
    from specplug.drafters.budget import load_cost_model

    return load_cost_model(source)
