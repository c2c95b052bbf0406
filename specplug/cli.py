"""The ``specplug`` command. Each subcommand lives in its own module exposing
``add_arguments(parser)`` and ``run(args) -> int``; user errors exit with code 2."""

from __future__ import annotations

import argparse
import importlib
import sys

from specplug.drafters.errors import SpecplugError

COMMANDS = {
    "generate": ("specplug.generate", "generate text with speculative decoding on the embedded engine"),
    "algorithms": ("specplug.algorithms_cmd", "list the registered algorithms"),
    "bench": ("specplug.bench", "benchmark algorithms side by side on prompt sets"),
    "bench-drafters": ("specplug.bench_drafters", "microbenchmark drafting cost (propose/observe) and memory"),
    "calibrate": (
        "specplug.calibrate",
        "measure the verify cost model (time vs tokens per pass) for load-aware budgets",
    ),
    "train-drafter": (
        "specplug.train_drafter",
        "distil a model drafter from the target on this machine (--kind diffusion: a masked diffusion drafter)",
    ),
    "simulate-budgets": (
        "specplug.simulate_budgets",
        "simulated throughput over batch sizes: load-aware vs fixed "
        "budgets vs AR, from a cost model and recorded trees",
    ),
    "mat-curves": (
        "specplug.mat_curves",
        "MAT vs tree budget, static vs dynamic trees (JSON, Markdown table, "
        "PNG); --combine merges runs over disjoint budgets",
    ),
    "plot": ("specplug.plots", "redraw the PNG beside a mat-curves or simulate-budgets JSON (needs matplotlib)"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse already exits 2; keep its message short
        self.print_usage(sys.stderr)
        self.exit(2, f"specplug: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="specplug", description="speculative decoding plugin: SGLang, TGI, transformers")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        mod = importlib.import_module(module)
        mod.add_arguments(p)
        p.set_defaults(_module=mod)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._module.run(args) or 0)
    except SpecplugError as e:
        print(f"specplug: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
