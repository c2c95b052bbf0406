"""specplug.adapters.vllm: specplug's algorithms as vLLM ``custom_class`` proposers.

One class per algorithm of specplug's table, named as SGLang names it::

    vllm serve MODEL --speculative-config \
        '{"method": "custom_class", "model": "specplug.adapters.vllm.RACER", "num_speculative_tokens": 8}'

(``RACER``, ``TOKEN_RECYCLING``, ``SUFFIX``, ``PLD``, ...). Importing this package imports
neither vLLM nor torch; the proposer applies :mod:`specplug.patches.vllm` when vLLM builds it.
See docs/vllm.md.
"""

from specplug.drafters import registry

from .config import VllmSettings, budget_policy_from_env, settings_from_env
from .proposer import SpecplugProposer, live_proposers, proposer_class
from .runtime import VllmChains

__all__ = [
    "SpecplugProposer",
    "VllmChains",
    "VllmSettings",
    "budget_policy_from_env",
    "live_proposers",
    "proposer_class",
    "settings_from_env",
]

# one class per algorithm of the table (an algorithm added there appears here too)
for _spec in registry.specs():
    if not _spec.peer:
        globals()[_spec.engine_name] = proposer_class(_spec.name)
        __all__.append(_spec.engine_name)
del _spec
