"""Proposers whose drafters fail, for the vLLM error tests (``--speculative-config`` names them
as ``faulty.FaultyAtStart``; the driver puts this folder on ``sys.path``)."""

from __future__ import annotations

from specplug.adapters.vllm import SpecplugProposer
from specplug.drafters.pld import PromptLookupDrafter


class _Raises(PromptLookupDrafter):
    """PLD whose ``propose`` raises on every ``every``-th call (1: always)."""

    every = 1

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = 0

    def propose(self, rids, budgets):
        self.calls += 1
        if self.calls % self.every == 0:
            raise RuntimeError(f"injected failure at call {self.calls}")
        return super().propose(rids, budgets)


class _Every3(_Raises):
    every = 3


class FaultyAtStart(SpecplugProposer):
    algorithm = "pld"

    def make_drafter(self, settings, vocab_size):
        return _Raises(vocab_size, **settings.options)


class FaultyMidRun(SpecplugProposer):
    algorithm = "pld"

    def make_drafter(self, settings, vocab_size):
        d = _Every3(vocab_size, **settings.options)
        d.calls = 1  # the start-up probe is call 1 and passes; every third call after it raises
        return d
