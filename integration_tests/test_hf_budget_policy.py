"""The embedded engine under the load-aware policy (the default of `specplug generate` and
`specplug bench`): a step whose trees are all cut to the root runs the AR path, the drafter
keeps learning meanwhile, and the output stays AR's whatever the policy picks."""

from __future__ import annotations

import numpy as np
import pytest

from specplug.adapters.hf.engine import GenerationConfig
from specplug.drafters import registry
from specplug.drafters.budget import BudgetPolicy, CostModel

PROMPT = [5, 6, 7, 8, 9, 5, 6, 7, 8, 9, 5, 6, 7, 8, 9, 5, 6, 7]


def cost(first: float, second: float, per_token: float) -> CostModel:
    pts = [
        {"tokens": w, "batch": 1, "width": w, "seconds": first if w == 1 else second + per_token * w}
        for w in (1, 2, 8, 64)
    ]
    return CostModel.from_points(pts)


class ForwardLog:
    """Records each forward call's input width (a pre-hook: the model's signature stays)."""

    def __init__(self, engine):
        self.widths: list[int] = []

        def hook(module, args, kwargs):
            self.widths.append(int(kwargs["input_ids"].shape[1]))

        engine.model.register_forward_pre_hook(hook, with_kwargs=True)


@pytest.mark.parametrize("algorithm", ["racer", "pld", "suffix", "token-recycling"])
def test_budget_one_steps_run_the_ar_path_and_the_drafter_keeps_learning(make_tiny, algorithm):
    eng = make_tiny()
    config = GenerationConfig(max_new_tokens=24)
    ar_log = ForwardLog(eng)
    [ar] = eng.generate([PROMPT], registry.create("ar", eng.vocab_size), 1, config)
    ar_widths = list(ar_log.widths)

    eng = make_tiny()
    log = ForwardLog(eng)
    drafter = registry.create(algorithm, eng.vocab_size)
    observed = []
    inner_observe = drafter.observe_batch
    drafter.observe_batch = lambda fb: (observed.append(len(fb.rids)), inner_observe(fb))[1]
    never_pays = BudgetPolicy(cost(0.01, 10.0, 1.0))
    [res] = eng.generate([PROMPT], drafter, 16, config, budget_policy=never_pays)

    assert res.output_ids == ar.output_ids
    assert res.speculative_steps == 0 and res.steps == ar.steps
    assert log.widths == ar_widths  # the same forward passes as AR: width 1 after the prefill
    assert all(w == 1 for w in log.widths[1:])
    assert len(observed) == res.steps - 2  # every verify step fed the drafter but the one that finished it


@pytest.mark.parametrize("algorithm", ["racer", "pld", "suffix", "token-recycling"])
@pytest.mark.parametrize("shape", ["flat", "dear_second_token", "steep"])
def test_output_is_ar_whatever_the_policy_picks(make_tiny, algorithm, shape):
    eng = make_tiny()
    config = GenerationConfig(max_new_tokens=32)
    ar = eng.generate([PROMPT, PROMPT[3:]], registry.create("ar", eng.vocab_size), 1, config)
    curve = {
        "flat": cost(0.05, 0.05, 1e-5),
        "dear_second_token": cost(0.05, 0.08, 1e-3),
        "steep": cost(0.05, 0.1, 0.05),
    }
    got = eng.generate(
        [PROMPT, PROMPT[3:]],
        registry.create(algorithm, eng.vocab_size),
        32,
        config,
        budget_policy=BudgetPolicy(curve[shape]),
    )
    assert [r.output_ids for r in got] == [r.output_ids for r in ar]
    if shape == "flat":  # free verification: the repetitive prompt is speculated on
        assert max(r.speculative_steps for r in got) > 0
    assert np.all([r.speculative_steps <= r.steps - 1 for r in got])
