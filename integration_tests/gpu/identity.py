"""Greedy output of every model-free algorithm vs autoregressive decoding, per dtype, on one device.

The check behind ``integration_tests/gpu/check.sh``: a tiny random Llama (the tests' own,
``tests/tiny_models.py``: wide init, so its next-token choices sit far from ties) in each
dtype on the device, repetitive random prompts, AR one prompt at a time as the reference,
each algorithm at its default budget in batches of several prompts. Nothing is hidden: every
request whose output differs is listed with its first differing position and a diagnosis.

Where the batch-invariant kernels do not apply (CUDA, or a CPU without oneDNN) the model runs
on transformers' own kernels, which are not batch-invariant: a verify pass (B rows x W tree
tokens) and an AR pass (one token) reduce in different orders, and in bf16 that can flip an
argmax where two logits nearly tie. The diagnosis tells that apart from a bug: it computes
the next-token logits of the common prefix in float64 (the gap between the two candidate
tokens) and, in the checked dtype, by one pass and by a cached one-token pass (their largest
difference: this dtype's round-off between two pass shapes). A gap within a few of those is
a near tie; anything wider is a suspected verification bug.

Verdicts: fp32 must be identical; bf16 must be identical on batch-invariant kernels, and on
library kernels may differ only at near ties (reported, not failed).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "tests"))
from tiny_models import make_tiny_llama  # noqa: E402  (the shared tiny-Llama builder)

from specplug.adapters.hf.config import GenerationConfig  # noqa: E402
from specplug.adapters.hf.engine import HFEngine  # noqa: E402
from specplug.adapters.hf.invariant import invariant_supported, is_invariant, make_invariant  # noqa: E402
from specplug.adapters.hf.kv import cache_kwarg  # noqa: E402
from specplug.drafters import registry  # noqa: E402

ALGORITHMS = ("racer", "token-recycling", "suffix", "pld")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
#: a gap within this many round-off scales (or ulps) counts as a near tie
TIE_FACTOR = 4.0


@dataclass
class Mismatch:
    prompt: int
    first_diff: int  # index into the generated tokens
    ar_token: int
    spec_token: int
    gap_fp64: float  # logit(AR's token) - logit(speculative token), float64 weights
    fp64_picks: str  # "ar", "speculative" or "neither"
    shape_noise: float  # max |logit difference| between two pass shapes, in the checked dtype
    ulp: float  # the checked dtype's spacing at the two logits' magnitude
    near_tie: bool
    cause: str


@dataclass
class Outcome:
    dtype: str
    algorithm: str
    kernels: str
    prompts: int
    identical: int
    mean_accepted_per_step: float
    mismatches: list[Mismatch] = field(default_factory=list)
    verdict: str = "identical"  # identical | near-tie mismatches (reported) | FAIL: ...


def prompts_of(vocab: int, n: int, seed: int) -> list[list[int]]:
    """Repetitive random prompts (short motifs repeated): retrieval drafters find matches."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        motif = rng.integers(3, vocab, size=int(rng.integers(2, 7))).tolist()
        out.append((motif * 12)[: int(rng.integers(6, 48))])
    return out


def build_engine(dtype: torch.dtype, device: str, vocab: int, seed: int) -> HFEngine:
    """The tiny Llama in ``dtype`` on ``device``: batch-invariant kernels where they apply
    (as ``HFEngine.load`` does), transformers' kernels elsewhere."""
    model = make_tiny_llama(seed, vocab_size=vocab, dtype=dtype).to(device)
    if dtype in (torch.bfloat16, torch.float16) and invariant_supported(model) is None:
        make_invariant(model)
    return HFEngine(model, None, eos_token_ids=[], model_name="tiny-llama")


def _last_logits(model, ids: list[int], device: str) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids], device=device)).logits[0, -1].double()


def _incremental_logits(model, ids: list[int], device: str) -> torch.Tensor:
    """The same position as :func:`_last_logits`, by a prefix pass and a one-token cached pass."""
    from transformers import DynamicCache

    with torch.inference_mode():
        kw = {cache_kwarg(model): DynamicCache(), "use_cache": True}
        model(input_ids=torch.tensor([ids[:-1]], device=device), **kw)
        return model(input_ids=torch.tensor([ids[-1:]], device=device), **kw).logits[0, -1].double()


def diagnose(ctx: list[int], ar_tok: int, spec_tok: int, dtype: torch.dtype, args) -> dict[str, Any]:
    """Why two greedy runs chose differently after ``ctx`` (see the module docstring)."""
    lib = make_tiny_llama(args.seed, vocab_size=args.vocab, dtype=dtype).to(args.device)  # library kernels
    exact = make_tiny_llama(args.seed, vocab_size=args.vocab, dtype=dtype).double().to(args.device)  # same weights
    ref = _last_logits(exact, ctx, args.device)
    one, inc = _last_logits(lib, ctx, args.device), _incremental_logits(lib, ctx, args.device)
    gap = float(ref[ar_tok] - ref[spec_tok])
    best = int(ref.argmax())
    noise = float((one - inc).abs().max())
    mag = max(abs(float(ref[ar_tok])), abs(float(ref[spec_tok])), 1e-30)
    ulp = float(torch.finfo(dtype).eps) * 2.0 ** np.floor(np.log2(mag))
    near = abs(gap) <= TIE_FACTOR * max(noise, ulp)
    if near:
        cause = (
            f"near tie: the two tokens' float64 logits differ by {abs(gap):.3g}, within {TIE_FACTOR:g}x this dtype's "
            f"round-off between two pass shapes ({noise:.3g}; ulp {ulp:.3g}); transformers' kernels are not "
            "batch-invariant, so the verify pass (rows x tree tokens) and the AR pass (one token) round differently"
        )
    else:
        cause = (
            f"NOT a near tie: float64 gap {abs(gap):.3g} exceeds {TIE_FACTOR:g}x the round-off scale "
            f"({max(noise, ulp):.3g}); suspect verification, KV compaction or masking"
        )
    picks = "ar" if best == ar_tok else "speculative" if best == spec_tok else "neither"
    return {"gap_fp64": gap, "fp64_picks": picks, "shape_noise": noise, "ulp": ulp, "near_tie": near, "cause": cause}


def run_dtype(label: str, args) -> list[Outcome]:
    dtype = DTYPES[label]
    engine = build_engine(dtype, args.device, args.vocab, args.seed)
    kernels = "batch-invariant" if is_invariant(engine.model) else "library"
    prompts = prompts_of(args.vocab, args.prompts, args.seed + 1)
    cfg = GenerationConfig(max_new_tokens=args.max_new_tokens)
    ar = registry.create("ar", engine.vocab_size)
    ref = [engine.generate([p], ar, 1, cfg)[0].output_ids for p in prompts]  # the true AR baseline
    outcomes = []
    for name in args.algorithms:
        drafter = registry.create(name, engine.vocab_size)
        budget = registry.get(name).default_budget
        res = []
        for s in range(0, len(prompts), args.batch):
            res += engine.generate(prompts[s : s + args.batch], drafter, budget, cfg)
        out = Outcome(
            label,
            name,
            kernels,
            len(prompts),
            0,
            sum(len(r.output_ids) for r in res) / max(sum(r.steps for r in res), 1),
        )
        for i, (r, want) in enumerate(zip(res, ref)):
            if r.output_ids == want:
                out.identical += 1
                continue
            pos = next(
                (k for k, (a, b) in enumerate(zip(want, r.output_ids)) if a != b), min(len(want), len(r.output_ids))
            )
            a_tok = want[pos] if pos < len(want) else -1
            s_tok = r.output_ids[pos] if pos < len(r.output_ids) else -1
            if min(a_tok, s_tok) < 0:  # a length difference, not a token choice
                diag: dict[str, Any] = {"gap_fp64": float("nan"), "fp64_picks": "neither", "shape_noise": float("nan")}
                diag |= {"ulp": float("nan"), "near_tie": False, "cause": "outputs differ in length: a stop-rule bug"}
            else:
                diag = diagnose(prompts[i] + want[:pos], a_tok, s_tok, dtype, args)
            out.mismatches.append(Mismatch(i, pos, a_tok, s_tok, **diag))
        out.verdict = verdict(out)
        outcomes.append(out)
    return outcomes


def verdict(o: Outcome) -> str:
    if not o.mismatches:
        return "identical"
    if o.dtype == "fp32":
        return f"FAIL: {len(o.mismatches)} fp32 mismatches"
    if o.kernels == "batch-invariant":
        return f"FAIL: {len(o.mismatches)} mismatches on batch-invariant kernels"
    far = sum(not m.near_tie for m in o.mismatches)
    if far:
        return f"FAIL: {far} of {len(o.mismatches)} mismatches are not near ties"
    return f"near-tie mismatches (reported): {len(o.mismatches)} of {o.prompts} prompts"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--algorithms", default=",".join(ALGORITHMS))
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--batch", type=int, default=4, help="prompts per generate call (batched verification)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--vocab", type=int, default=32, help="a small vocabulary: greedy output repeats, drafts land")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", required=True)
    args = p.parse_args(argv)
    args.algorithms = [a for a in args.algorithms.split(",") if a]
    if torch.device(args.device).type == "cpu":
        torch.set_num_threads(1)  # a tiny model: more threads only wait on each other
    else:
        # full fp32 products: TF32 would make fp32 a 10-bit-mantissa dtype
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    t0 = time.perf_counter()
    outcomes = [o for label in args.dtypes.split(",") if label for o in run_dtype(label, args)]
    failed = [o for o in outcomes if o.verdict.startswith("FAIL")]
    report = {
        "device": args.device,
        "device_name": torch.cuda.get_device_name() if torch.device(args.device).type == "cuda" else "cpu",
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "seconds": round(time.perf_counter() - t0, 2),
        "ok": not failed,
        "results": [asdict(o) for o in outcomes],
    }
    with open(args.json, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    for o in outcomes:
        line = f"{o.dtype:>4} {o.algorithm:<16} {o.kernels:<15} {o.identical}/{o.prompts} identical, "
        print(line + f"MAT {o.mean_accepted_per_step:.2f}: {o.verdict}")
        for m in o.mismatches:
            print(f"      prompt {m.prompt} token {m.first_diff}: AR {m.ar_token} vs {m.spec_token}; {m.cause}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
