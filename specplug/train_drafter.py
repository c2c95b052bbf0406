"""``specplug train-drafter``: distil a small masked diffusion drafter from the target, on a CPU.

DEER stage II style (arXiv 2512.15176): the target generates greedy continuations of
prompts; each training example is a window of a (prompt + continuation) sequence whose last
R ~ U(1, r_max) tokens (inside the continuation) are replaced by the mask token; the loss is
cross-entropy at the masked positions with position weights alpha^(R - i) (i = 1..R, so
earlier masked positions weigh slightly more; alpha = 1.01).

The drafter (:mod:`specplug.drafters.diffusion_model`) is initialised from the target:
its embedding (tied LM head, kept frozen) and final norm, and a few of its layers
(``--layers``, default the first two and the last two), with attention made bidirectional. Training prompts
are the built-in prompt sets **minus their first ``--skip-first`` items** (default 20), so
benchmarks that use ``--limit`` up to 20 never see a training prompt.

Resumable: the output directory holds the generated data (``train_data.pt``), the HF-format
checkpoint (``config.json``, ``model.safetensors``, the target's tokenizer), the optimizer
state (``train_state.pt``) and a log (``train_log.json``); ``--resume`` continues from them.
A checkpoint is written every ``--save-every`` minutes and at the end; ``--time-limit``
bounds the whole run (data generation included).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import sys
import time

import numpy as np

from specplug.drafters.errors import ConfigError

__all__ = ["add_arguments", "run", "TrainConfig", "train_loop", "make_batch", "evaluate", "generate_data"]

DATA_FILE = "train_data.pt"
STATE_FILE = "train_state.pt"
LOG_FILE = "train_log.json"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kind", required=True, choices=["diffusion"], help="drafter kind to train")
    p.add_argument(
        "--target",
        default="default",
        help="target model: 'default' (SmolLM2-135M-Instruct) or a local HF model directory",
    )
    p.add_argument(
        "--out",
        default=None,
        help="output checkpoint directory (default: $SPECPLUG_CACHE/drafters/diffusion-<target name>)",
    )
    p.add_argument("--time-limit", type=float, default=60.0, help="minutes for the whole run (default 60)")
    p.add_argument("--steps", type=int, default=100000, help="most optimizer steps (default 100000)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    p.add_argument(
        "--layers",
        default="0,1,28,29",
        help="target layers copied into the drafter (default 0,1,28,29: "
        "the first two and the last two trained fastest in a 30-step comparison)",
    )
    p.add_argument("--batch", type=int, default=8, help="sequences per step (default 8)")
    p.add_argument("--lr", type=float, default=3e-4, help="peak learning rate (default 3e-4)")
    p.add_argument("--window", type=int, default=64, help="context tokens before the masked block (default 64)")
    p.add_argument("--r-max", type=int, default=96, help="masked block length R ~ U(1, r_max) (default 96)")
    p.add_argument("--alpha", type=float, default=1.01, help="position weight base alpha^(R-i) (default 1.01)")
    p.add_argument("--gen-tokens", type=int, default=160, help="target continuation length per prompt (default 160)")
    p.add_argument("--gen-batch", type=int, default=16, help="prompts per generation batch (default 16)")
    p.add_argument(
        "--skip-first",
        type=int,
        default=20,
        help="prompts of each built-in set left out of training (benchmarks use the first ones)",
    )
    p.add_argument("--prompts", default="humaneval,mtbench,gsm8k", help="prompt sets used for training data")
    p.add_argument("--gen-share", type=float, default=0.35, help="largest share of --time-limit spent generating data")
    p.add_argument("--save-every", type=float, default=5.0, help="minutes between checkpoints (default 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument(
        "--eval-only",
        action="store_true",
        help="no training: evaluate the checkpoint in --out on its held-out data (per-slot accuracy, "
        "and simulated acceptance of path-search and draft-length variants)",
    )


# ------------------------------------------------------------------ data
def generate_data(
    engine, prompt_ids: list[list[int]], gen_tokens: int, batch: int, deadline: float, progress=None
) -> tuple[list[np.ndarray], list[int]]:
    """Greedy target continuations (until EOS or ``gen_tokens``); (sequences, prompt lengths)."""
    import torch

    model, eos = engine.model, list(engine.eos_token_ids)
    pad = eos[0] if eos else 0
    seqs, plens = [], []
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    for s in range(0, len(order), batch):
        if time.monotonic() > deadline:
            break
        idx = order[s : s + batch]
        longest = max(len(prompt_ids[i]) for i in idx)
        ids = torch.full((len(idx), longest), pad, dtype=torch.long)
        att = torch.zeros((len(idx), longest), dtype=torch.long)
        for r, i in enumerate(idx):  # left padding
            p = prompt_ids[i]
            ids[r, longest - len(p) :] = torch.tensor(p)
            att[r, longest - len(p) :] = 1
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids,
                attention_mask=att,
                max_new_tokens=gen_tokens,
                do_sample=False,
                eos_token_id=eos or None,
                pad_token_id=pad,
            )
        for r, i in enumerate(idx):
            cont = out[r, longest:].tolist()
            for j, t in enumerate(cont):
                if t in eos:
                    cont = cont[: j + 1]
                    break
            seqs.append(np.asarray(list(prompt_ids[i]) + cont, np.int64))
            plens.append(len(prompt_ids[i]))
        if progress is not None:
            progress(len(idx))
    return seqs, plens


def make_batch(
    seqs,
    plens,
    rng: np.random.Generator,
    batch: int,
    window: int,
    r_max: int,
    mask_id: int,
    alpha: float,
    r_fixed: int | None = None,
    pad_id: int = 0,
):
    """(input_ids [B, L], key_mask [B, L], targets [B, R_max], weights [B, R_max], start) as torch tensors.

    Each row: ``window`` (or fewer) context tokens, then R masked slots whose targets are the
    next R tokens of the sequence; rows are left-aligned and right-padded, and the masked
    block of every row starts at its own offset, so targets are gathered per row.
    """
    import torch

    n = len(seqs)
    rows = []
    for _ in range(batch):
        for _attempt in range(20):
            k = int(rng.integers(n))
            s, pl = seqs[k], plens[k]
            gen = len(s) - pl
            if gen >= 1:
                break
        R = int(r_fixed) if r_fixed is not None else int(rng.integers(1, r_max + 1))
        R = min(R, gen)
        start = int(rng.integers(max(pl, 1), len(s) - R + 1))  # first masked position, in the continuation
        ctx0 = max(0, start - window)
        rows.append((s[ctx0:start], s[start : start + R]))
    L = max(len(c) + len(t) for c, t in rows)
    Rm = max(len(t) for _, t in rows)
    ids = torch.full((batch, L), pad_id, dtype=torch.long)
    key = torch.zeros((batch, L), dtype=torch.bool)
    tgt = torch.zeros((batch, Rm), dtype=torch.long)
    w = torch.zeros((batch, Rm), dtype=torch.float32)
    pos = torch.zeros((batch, Rm), dtype=torch.long)
    for b, (c, t) in enumerate(rows):
        nc, R = len(c), len(t)
        ids[b, :nc] = torch.from_numpy(np.asarray(c))
        ids[b, nc : nc + R] = mask_id
        key[b, : nc + R] = True
        tgt[b, :R] = torch.from_numpy(np.asarray(t))
        w[b, :R] = torch.from_numpy(alpha ** (R - np.arange(1, R + 1, dtype=np.float64))).float()
        pos[b, :R] = torch.arange(nc, nc + R)
        pos[b, R:] = nc  # padding slots point at a valid position, weight 0
    return ids, key, tgt, w, pos


def batch_loss(model, ids, key, tgt, w, pos):
    import torch.nn.functional as F

    logits = model.slot_logits(ids, key, pos)
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), tgt.reshape(-1), reduction="none")
    ce = ce.view_as(w)
    return (ce * w).sum() / w.sum().clamp(min=1e-9), logits, ce


def evaluate(
    model, seqs, plens, window: int, k: int, mask_id: int, n: int = 96, seed: int = 1234, batch: int = 16
) -> dict:
    """Per-position argmax accuracy over k masked slots, and the mean accepted prefix of the argmax chain."""
    import torch

    rng = np.random.default_rng(seed)
    good = [i for i in range(len(seqs)) if len(seqs[i]) - plens[i] >= k]
    if not good:
        return {"samples": 0}
    sub = [seqs[i] for i in good]
    subp = [plens[i] for i in good]
    hits = np.zeros(k)
    acc_len = []
    model.eval()
    with torch.inference_mode():
        for s in range(0, n, batch):
            b = min(batch, n - s)
            ids, key, tgt, w, pos = make_batch(sub, subp, rng, b, window, k, mask_id, 1.0, r_fixed=k)
            pred = model.slot_logits(ids, key, pos).argmax(-1)
            ok = (pred == tgt).numpy()
            hits += ok.sum(0)
            for row in ok:
                miss = np.flatnonzero(~row)
                acc_len.append(int(miss[0]) if miss.size else k)
    return {
        "samples": n,
        "k": k,
        "per_position_acc": [round(float(x), 4) for x in hits / n],
        "mean_acc": round(float(hits.sum() / (n * k)), 4),
        "argmax_chain_accepted": round(float(np.mean(acc_len)), 3),
    }


def tree_accepted(tree, continuation) -> int:
    """Greedy acceptance of a draft tree against the target's known continuation: the
    longest root-to-node path whose tokens equal the continuation's first tokens."""
    kids: dict[int, dict[int, int]] = {}
    for i in range(1, len(tree)):
        kids.setdefault(int(tree.parents[i]), {})[int(tree.tokens[i])] = i
    node, n = 0, 0
    while n < len(continuation):
        nxt = kids.get(node, {}).get(int(continuation[n]))
        if nxt is None:
            break
        node, n = nxt, n + 1
    return n


def simulate_acceptance(
    model_path: str, seqs, plens, variants: dict, points: int = 96, budget: int = 16, seed: int = 7
) -> dict:
    """Mean accepted draft tokens per step of drafter variants on held-out target continuations.

    The continuations are the target's greedy outputs, so a draft is accepted exactly as
    the greedy verifier would (same cut points for every variant); ``variants`` maps a
    label to diffusion options.
    """
    from specplug.drafters import registry

    rng = np.random.default_rng(seed)
    good = [i for i in range(len(seqs)) if len(seqs[i]) - plens[i] >= 8]
    cuts = []
    for _ in range(points):
        i = good[int(rng.integers(len(good)))]
        cuts.append((i, int(rng.integers(plens[i] + 1, len(seqs[i]) - 4))))
    out = {}
    for label, opts in variants.items():
        d = registry.create("diffusion", _vocab_of(model_path), {"model_path": model_path, **opts})
        acc = []
        for r, (i, c) in enumerate(cuts):
            d.start(r, seqs[i][:c].tolist())
            tree = d.propose([r], [budget])[0]
            acc.append(tree_accepted(tree, seqs[i][c:]))
            d.finish(r)
        out[label] = {
            "mean_accepted": round(float(np.mean(acc)), 3),
            "mat": round(1 + float(np.mean(acc)), 3),
            "points": len(acc),
            "budget": budget,
            "draft_ms": round(1000 * d.stats["forward_s"] / max(1, d.stats["steps"]), 1),
            "search_ms": round(1000 * d.stats["search_s"] / max(1, d.stats["steps"]), 1),
        }
    return out


def _vocab_of(model_path: str) -> int:
    from specplug.drafters.diffusion_model import read_config

    return int(read_config(model_path)["vocab_size"])


class TrainConfig:
    def __init__(
        self,
        *,
        steps=1000,
        time_limit_s=600.0,
        batch=8,
        lr=3e-4,
        window=64,
        r_max=96,
        alpha=1.01,
        warmup=50,
        save_every_s=300.0,
        seed=0,
        weight_decay=0.0,
        min_lr_ratio=0.1,
    ):
        self.steps, self.time_limit_s, self.batch, self.lr = int(steps), float(time_limit_s), int(batch), float(lr)
        self.window, self.r_max, self.alpha, self.warmup = int(window), int(r_max), float(alpha), int(warmup)
        self.save_every_s, self.seed, self.weight_decay = float(save_every_s), int(seed), float(weight_decay)
        self.min_lr_ratio = float(min_lr_ratio)


def train_loop(
    model,
    seqs,
    plens,
    cfg: TrainConfig,
    out_dir=None,
    state=None,
    progress=True,
    extra_files=None,
    log=None,
    train_embedding: bool = False,
) -> dict:
    """Train ``model`` in place; checkpoints into ``out_dir`` (if given). Returns the final state dict.

    The learning rate warms up over ``cfg.warmup`` steps, then decays (cosine) to
    ``min_lr_ratio`` of its peak along max(step / steps, elapsed / time limit). The
    vocabulary embedding (tied LM head) stays frozen unless ``train_embedding``.
    """
    import torch
    from tqdm import tqdm

    from specplug.drafters.diffusion_model import save_diffusion_model

    mask_id = model.config.mask_token_id
    params = [p for n, p in model.named_parameters() if train_embedding or n != "embed_tokens"]
    model.embed_tokens.requires_grad_(bool(train_embedding))
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay)
    state = dict(state or {})
    step, elapsed = int(state.get("step", 0)), float(state.get("elapsed", 0.0))
    if "optimizer" in state:
        opt.load_state_dict(state["optimizer"])
    rng = np.random.default_rng(cfg.seed + step)
    log = list(log or state.get("log", []))
    ema = state.get("loss_ema")
    model.train()
    t_start = time.monotonic() - elapsed
    last_save = time.monotonic()
    bar = tqdm(
        total=cfg.steps,
        initial=step,
        desc="train-drafter",
        unit="step",
        disable=not progress,
        file=sys.stderr,
        dynamic_ncols=True,
    )

    def save(final=False):
        if out_dir is None:
            return
        st = {
            "step": step,
            "elapsed": time.monotonic() - t_start,
            "optimizer": opt.state_dict(),
            "loss_ema": ema,
            "log": log,
        }
        save_diffusion_model(model, out_dir, extra_files=extra_files)
        tmp = pathlib.Path(out_dir) / f".{STATE_FILE}.tmp"
        torch.save(st, tmp)
        os.replace(tmp, pathlib.Path(out_dir) / STATE_FILE)

    try:
        while step < cfg.steps and time.monotonic() - t_start < cfg.time_limit_s:
            frac = max(step / max(cfg.steps, 1), (time.monotonic() - t_start) / max(cfg.time_limit_s, 1e-9))
            lr = cfg.lr * min(1.0, (step + 1) / max(cfg.warmup, 1))
            lr *= cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
            for g in opt.param_groups:
                g["lr"] = lr
            ids, key, tgt, w, pos = make_batch(seqs, plens, rng, cfg.batch, cfg.window, cfg.r_max, mask_id, cfg.alpha)
            loss, _, _ = batch_loss(model, ids, key, tgt, w, pos)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            step += 1
            lv = float(loss.detach())
            ema = lv if ema is None else 0.98 * ema + 0.02 * lv
            if step % 25 == 0:
                log.append(
                    {
                        "step": step,
                        "elapsed_s": round(time.monotonic() - t_start, 1),
                        "loss_ema": round(ema, 4),
                        "lr": lr,
                    }
                )
            bar.update(1)
            bar.set_postfix(loss=f"{ema:.3f}", lr=f"{lr:.1e}")
            if out_dir is not None and time.monotonic() - last_save > cfg.save_every_s:
                save()
                last_save = time.monotonic()
    finally:
        bar.close()
    model.eval()
    save(final=True)
    return {"step": step, "elapsed": time.monotonic() - t_start, "loss_ema": ema, "log": log}


# ------------------------------------------------------------------ CLI
def _default_out(target: str) -> pathlib.Path:
    from specplug.adapters.hf.models import cache_root

    name = "smollm2" if target == "default" else pathlib.Path(target).name or "target"
    return cache_root() / "drafters" / f"diffusion-{name}"


def run(args) -> int:
    import torch

    from specplug.adapters.hf.engine import HFEngine
    from specplug.drafters.diffusion_model import count_parameters, init_from_target, load_diffusion_model
    from specplug.prompts import encode_prompt, load_prompt_set

    if args.threads:
        torch.set_num_threads(int(args.threads))
    if not args.time_limit > 0:
        raise ConfigError(f"--time-limit must be a positive number of minutes, got {args.time_limit}")
    for name, v, lo in (
        ("--steps", args.steps, 1),
        ("--batch", args.batch, 1),
        ("--window", args.window, 1),
        ("--r-max", args.r_max, 1),
        ("--gen-tokens", args.gen_tokens, 1),
    ):
        if not v >= lo:
            raise ConfigError(f"{name} must be >= {lo}, got {v}")
    try:
        layers = [int(x) for x in str(args.layers).split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--layers must be comma-separated layer indices, got {args.layers!r}") from None
    if not layers:
        raise ConfigError("--layers needs at least one layer index")
    out = pathlib.Path(args.out).expanduser() if args.out else _default_out(args.target)
    if args.eval_only:
        return _eval_only(out, args)
    t0 = time.monotonic()
    limit_s = float(args.time_limit) * 60.0
    engine = HFEngine.load(None if args.target == "default" else args.target)
    print(f"specplug: target {engine.model_name}, vocab {engine.vocab_size}; output {out}", file=sys.stderr)

    data_path = out / DATA_FILE
    prev_elapsed = 0.0
    if args.resume and data_path.is_file():
        data = torch.load(data_path, weights_only=False)
        seqs, plens = data["seqs"], data["plens"]
        held_seqs, held_plens = data["held_seqs"], data["held_plens"]
        print(f"specplug: resumed data: {len(seqs)} train / {len(held_seqs)} held-out sequences", file=sys.stderr)
    else:
        prompts = []
        for name in [s for s in args.prompts.split(",") if s.strip()]:
            items = load_prompt_set(name.strip())[args.skip_first :]
            prompts += [encode_prompt(engine, p) for p in items]
        prompts = [p[-256:] for p in prompts]  # long prompts: their tail is what the drafter sees anyway
        rng = np.random.default_rng(args.seed)
        perm = rng.permutation(len(prompts))
        prompts = [prompts[i] for i in perm]
        from tqdm import tqdm

        bar = tqdm(total=len(prompts), desc="target continuations", unit="prompt", file=sys.stderr)
        deadline = t0 + args.gen_share * limit_s
        all_seqs, all_plens = generate_data(engine, prompts, args.gen_tokens, args.gen_batch, deadline, bar.update)
        bar.close()
        if len(all_seqs) < 2:
            raise ConfigError("too little training data was generated in the time limit; raise --time-limit")
        n_held = max(1, len(all_seqs) // 10)
        held_seqs, held_plens = all_seqs[:n_held], all_plens[:n_held]
        seqs, plens = all_seqs[n_held:], all_plens[n_held:]
        out.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "seqs": seqs,
                "plens": plens,
                "held_seqs": held_seqs,
                "held_plens": held_plens,
                "gen_seconds": time.monotonic() - t0,
                "prompt_sets": args.prompts,
                "skip_first": args.skip_first,
            },
            data_path,
        )
        print(
            f"specplug: generated {len(all_seqs)} continuations "
            f"({sum(len(s) - p for s, p in zip(all_seqs, all_plens))} target tokens) in "
            f"{time.monotonic() - t0:.0f} s",
            file=sys.stderr,
        )

    state = None
    if args.resume and (out / STATE_FILE).is_file() and (out / "model.safetensors").is_file():
        model, _ = load_diffusion_model(out)
        model.requires_grad_(True)
        state = torch.load(out / STATE_FILE, weights_only=False)
        prev_elapsed = float(state.get("elapsed", 0.0))
        print(f"specplug: resumed at step {state.get('step')} ({prev_elapsed / 60:.1f} min trained)", file=sys.stderr)
    else:
        model = init_from_target(engine.model, layers)
    model.float()
    print(
        f"specplug: drafter {model.config.num_hidden_layers} layers, {count_parameters(model) / 1e6:.1f} M "
        f"parameters ({model.config.vocab_size * model.config.hidden_size / 1e6:.1f} M frozen embedding)",
        file=sys.stderr,
    )
    tokenizer_dir = out
    if engine.tokenizer is not None:
        out.mkdir(parents=True, exist_ok=True)
        engine.tokenizer.save_pretrained(tokenizer_dir)
    remaining = limit_s - (time.monotonic() - t0)
    cfg = TrainConfig(
        steps=args.steps,
        time_limit_s=prev_elapsed + max(0.0, remaining),
        batch=args.batch,
        lr=args.lr,
        window=args.window,
        r_max=args.r_max,
        alpha=args.alpha,
        save_every_s=args.save_every * 60.0,
        seed=args.seed,
    )
    result = train_loop(
        model,
        seqs,
        plens,
        cfg,
        out_dir=out,
        state=state,
        extra_files={
            "specplug_training.json": {
                "target": engine.model_name,
                "init_layers": layers,
                "window": args.window,
                "r_max": args.r_max,
                "alpha": args.alpha,
                "prompt_sets": args.prompts,
                "skip_first": args.skip_first,
            }
        },
    )
    ev = evaluate(model, held_seqs, held_plens, args.window, 30, model.config.mask_token_id)
    summary = {
        "steps": result["step"],
        "train_minutes": round(result["elapsed"] / 60, 2),
        "loss_ema": result["loss_ema"],
        "train_sequences": len(seqs),
        "held_out_sequences": len(held_seqs),
        "held_out": ev,
    }
    (out / LOG_FILE).write_text(json.dumps({**summary, "log": result["log"]}, indent=1))
    print(json.dumps(summary, indent=1))
    return 0


def _eval_only(out: pathlib.Path, args) -> int:
    import torch

    from specplug.drafters.diffusion_model import load_diffusion_model

    if not (out / DATA_FILE).is_file():
        raise ConfigError(f"no training data in {out} ({DATA_FILE}); train first")
    data = torch.load(out / DATA_FILE, weights_only=False)
    model, cfg = load_diffusion_model(out)
    held, held_p = data["held_seqs"], data["held_plens"]
    ev = evaluate(model, held, held_p, args.window, 30, cfg.mask_token_id)
    variants = {"beam (CPS)": {}, "argmax": {"path_search": "argmax"}, "beam, chain": {"mode": "chain"}}
    sims = {f"budget {b}": simulate_acceptance(str(out), held, held_p, variants, budget=b) for b in (16, 64)}
    report = {"held_out": ev, "simulated_acceptance": sims, "held_out_sequences": len(held)}
    print(json.dumps(report, indent=1))
    (out / "eval.json").write_text(json.dumps(report, indent=1))
    return 0
