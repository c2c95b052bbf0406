"""``specplug algorithms``: one line per registered algorithm."""

from __future__ import annotations

from specplug import peers  # noqa: F401 (lists the benchmark peers too, e.g. sglang-ngram)
from specplug.drafters import registry


def add_arguments(p):
    p.add_argument("--verbose", "-v", action="store_true", help="also list each algorithm's options and defaults")


def run(args) -> int:
    for spec in registry.specs():
        print(f"{spec.name:<16} {spec.description}")
        if args.verbose:
            print(f"{'':<16}   default budget: {spec.default_budget}; engine name: {spec.engine_name}")
            for opt in spec.options:
                print(f"{'':<16}   {opt.describe()}")
    return 0
