"""``specplug simulate-budgets``: simulated serving throughput vs batch size with a measured
cost model: AR, every fixed budget, and the load-aware policy (:mod:`specplug.drafters.budget`).

Method (replay, no invented acceptance):
1. Record: the embedded engine generates the prompt sets greedily with the drafter at the
   largest budget; for every step whose budget was not cut by the tokens left to generate
   we keep the tree's node scores (insertion order, best first) and the insertion indices
   of its accepted path.
2. Replay: truncating a best-first tree to its first n nodes keeps an ancestor-closed tree,
   and greedy verification of the truncated tree accepts exactly the leading accepted-path
   nodes with index < n. So every recorded step gives the realised accepted tokens at any
   budget <= the recorded one.
3. Simulate batch B: ``--steps`` simulated engine steps, each drawing B recorded steps at
   random; throughput = committed tokens / cost(total tokens in the pass). AR: B / cost(B).
   Fixed budget n: sum(1 + accepted within n) / cost(B * n). Policy: budgets from the node
   scores times the recorded realised/expected ratio (length calibration), then the same,
   charged cost(sum of budgets) (an engine that flattens trees, "policy"); for engines
   that pad every tree to the widest one (the embedded engine, SGLang's fixed width) the
   padded policy picks one width per batch and is charged cost(B * width) ("policy, padded").
   A cost model measured as a (batch, width) grid prices every padded pass by its shape
   (:meth:`CostModel.step`), the ragged policy at its mean width per row.
Approximation: the drafter's state evolves as at the recorded budget.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

from specplug.drafters.errors import ConfigError


def add_arguments(p):
    p.add_argument("--algorithm", default="racer[dynamic]", help="algorithm or NAME[tree mode] to record")
    p.add_argument("--prompts", default="humaneval,mtbench,gsm8k")
    p.add_argument("--limit", type=int, default=3)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--record-budget", type=int, default=64, help="tree budget of the recording (largest)")
    p.add_argument("--budgets", default="2,4,8,16,32,64", help="fixed budgets compared")
    p.add_argument("--batches", default="1,2,4,8,16,32,64,128,256")
    p.add_argument(
        "--cost-model",
        default="cpu",
        help="name in the package's cost_models/, a JSON path (e.g. a cached measured one), or 'measured' "
        "(the embedded engine's, measured now or read from the cache)",
    )
    p.add_argument("--steps", type=int, default=200, help="simulated steps per batch size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--records",
        default=None,
        help="NPZ of recorded steps: loaded when it exists (no model run), else written after recording",
    )
    p.add_argument("--json", required=True, help="output JSON; a .md table next to it (and .png with matplotlib)")


class _Recorder:
    """Wraps a drafter: records node scores and accepted-path indices of every step."""

    def __init__(self, inner, record_budget: int):
        self._inner = inner
        self.record_budget = int(record_budget)
        self.steps = []  # (scores[1:] float64, accepted path insertion indices)
        self._budget = {}

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def propose(self, rids, budgets):
        self._budget = dict(zip(rids, budgets))
        return self._inner.propose(rids, budgets)

    def observe_batch(self, feedback):
        for i, (rid, t) in enumerate(zip(feedback.rids, feedback.trees)):
            acc = feedback.accepted_of(i)
            if self._budget.get(rid) != self.record_budget:
                continue  # cut by the remaining tokens: not a full tree
            path, node = [], 0
            for tok in list(acc)[:-1]:  # accepted draft tokens (bonus excluded)
                kids = np.flatnonzero((t.parents == node) & (t.tokens == tok))
                if kids.shape[0] == 0:
                    break
                node = int(kids[0])
                path.append(node)
            self.steps.append((np.asarray(t.scores[1:], np.float64), np.asarray(path, np.int64)))
        return self._inner.observe_batch(feedback)


def accepted_within(path: np.ndarray, n: int) -> int:
    """Accepted draft tokens when the tree is cut to its first n nodes (root included)."""
    inside = path < n
    return int(inside.shape[0] if inside.all() else np.argmin(inside))


def simulate(records, cost, batches, budgets, steps, ratio, seed=0):
    from specplug.drafters.budget import choose_budgets

    rng = np.random.default_rng(seed)
    rows = []
    for b in batches:
        ar_tok = ar_time = 0.0
        fixed = {n: [0.0, 0.0] for n in budgets}
        pol = [0.0, 0.0, 0.0, 0.0]  # tokens, time (ragged batch), tree nodes, time (padded batch)
        pol_pad_tok = 0.0
        for _ in range(steps):
            pick = rng.integers(0, len(records), b)
            ar_tok += b
            ar_time += float(cost.step(b, [1])[0])
            for n in budgets:
                acc = sum(accepted_within(records[i][1], n) for i in pick)
                fixed[n][0] += b + acc
                fixed[n][1] += float(cost.step(b, [n])[0])  # padded to n
            gains = [np.minimum.accumulate(records[i][0]) if records[i][0].shape[0] else np.zeros(0) for i in pick]
            bud, _, total = choose_budgets(gains, cost, max_budget=max(budgets), ratio=ratio)
            acc = sum(accepted_within(records[i][1], int(n)) for i, n in zip(pick, bud))
            pol[0] += b + acc
            # a grid model has no ragged passes: price one at its mean width (same rows)
            pol[1] += float(cost.step(b, [total / b])[0] if cost.is_grid else cost(total))
            pol[2] += float(bud.sum())
            bud_p, _, total_p = choose_budgets(gains, cost, max_budget=max(budgets), ratio=ratio, padded=True)
            pol[3] += float(cost.step(b, [total_p // b])[0])
            pol_pad_tok += b + sum(accepted_within(records[i][1], int(n)) for i, n in zip(pick, bud_p))
        fixed_tps = {n: v[0] / v[1] for n, v in fixed.items()}
        best_n = max(fixed_tps, key=fixed_tps.get)
        rows.append(
            {
                "batch": b,
                "ar_tokens_per_s": ar_tok / ar_time,
                "fixed_tokens_per_s": {str(n): v for n, v in fixed_tps.items()},
                "best_fixed_budget": best_n,
                "best_fixed_tokens_per_s": fixed_tps[best_n],
                "policy_tokens_per_s": pol[0] / pol[1],
                "policy_mean_budget": pol[2] / (steps * b),
                "policy_padded_tokens_per_s": pol_pad_tok / pol[3],
            }
        )
    return rows


def run(args) -> int:
    import torch

    from specplug.bench import split_variant
    from specplug.drafters import registry
    from specplug.drafters.budget import load_cost_model

    engine = None
    if args.cost_model == "measured":
        from specplug.adapters.hf.cost import engine_cost_model
        from specplug.adapters.hf.engine import HFEngine

        torch.set_num_threads(1)
        engine = HFEngine.load()
        cached = engine_cost_model(engine)
        cost = cached.model
        cost.meta = {
            **cached.key,
            "torch_threads": cached.key["threads"],
            **cached.describe(),
        }
    else:
        cost = load_cost_model(args.cost_model)
    budgets = [int(x) for x in args.budgets.split(",")]
    batches = [int(x) for x in args.batches.split(",")]
    if max(budgets) > args.record_budget:
        raise ConfigError("--budgets must not exceed --record-budget (replay truncates recorded trees)")
    name, opts = split_variant(args.algorithm)

    if args.records and os.path.isfile(args.records):
        z = np.load(args.records)
        so, po = z["score_off"], z["path_off"]
        records = [(z["scores"][so[i] : so[i + 1]], z["paths"][po[i] : po[i + 1]]) for i in range(so.shape[0] - 1)]
    else:
        torch.set_num_threads(1)
        from specplug.adapters.hf.config import GenerationConfig
        from specplug.adapters.hf.engine import HFEngine
        from specplug.prompts import encode_prompt, load_prompt_set

        engine = engine or HFEngine.load()
        rec = _Recorder(registry.create(name, engine.vocab_size, opts), args.record_budget)
        cfg = GenerationConfig(max_new_tokens=args.max_new_tokens)
        for s in args.prompts.split(","):
            for p in load_prompt_set(s, limit=args.limit):
                engine.generate([encode_prompt(engine, p)], rec, args.record_budget, cfg)
        records = rec.steps
        if args.records:
            so = np.cumsum([0] + [r[0].shape[0] for r in records])
            po = np.cumsum([0] + [r[1].shape[0] for r in records])
            np.savez_compressed(
                args.records,
                scores=np.concatenate([r[0] for r in records]),
                paths=np.concatenate([r[1] for r in records]),
                score_off=so,
                path_off=po,
            )
    if not records:
        raise ConfigError("no recorded steps (is --max-new-tokens larger than --record-budget?)")
    expected = sum(float(r[0].sum()) for r in records)
    realised = sum(int(r[1].shape[0]) for r in records)
    ratio = realised / expected if expected > 0 else 1.0
    rows = simulate(records, cost, batches, budgets, args.steps, ratio, args.seed)
    out = {
        "algorithm": args.algorithm,
        "recorded_steps": len(records),
        "record_budget": args.record_budget,
        "expected_accepted_per_step": expected / len(records),
        "realised_accepted_per_step": realised / len(records),
        "length_calibration_ratio": ratio,
        "cost_model": cost.meta,
        "method": __doc__.strip(),
        "command": "specplug simulate-budgets " + " ".join(sys.argv[2:]),
        "results": rows,
    }
    with open(args.json, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=2)
    lines = [
        f"Simulated throughput (tokens/s), {args.algorithm}, cost model {cost.meta.get('device')} "
        f"({cost.meta.get('model')}, {cost.meta.get('torch_threads')} thread(s)); {len(records)} recorded steps, "
        f"realised/expected ratio {ratio:.3f}",
        "",
        "| batch | AR | "
        + " | ".join(f"fixed {n}" for n in budgets)
        + " | best fixed | policy | policy mean budget | policy, padded |",
        "|---:|---:|" + "---:|" * len(budgets) + "---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['batch']} | {r['ar_tokens_per_s']:.1f} | "
            + " | ".join(f"{r['fixed_tokens_per_s'][str(n)]:.1f}" for n in budgets)
            + f" | {r['best_fixed_tokens_per_s']:.1f} (n={r['best_fixed_budget']}) | "
            f"{r['policy_tokens_per_s']:.1f} | {r['policy_mean_budget']:.2f} | "
            f"{r['policy_padded_tokens_per_s']:.1f} |"
        )
    md = os.path.splitext(args.json)[0] + ".md"
    with open(md, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    from specplug.plots import throughput_png

    throughput_png(rows, os.path.splitext(args.json)[0] + ".png")
    return 0
