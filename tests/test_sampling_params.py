"""Per-request sampling settings: the type, their way through the session to the drafter, and
each engine adapter's mapping of its own request parameters onto them."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from specplug.drafters.base import ContextDrafter
from specplug.drafters.errors import ConfigError
from specplug.drafters.sampling import GREEDY, REGIME_NAMES, SamplingParams, sampling_regime
from specplug.drafters.session import DraftSession, RequestView
from specplug.drafters.tree import DraftTree


def test_regimes_bin_temperature():
    assert [sampling_regime(t) for t in (0.0, 0.3, 0.6, 0.7, 0.8, 0.9, 1.0, 1.5)] == [0, 1, 1, 2, 2, 3, 3, 3]
    assert len(REGIME_NAMES) == 4
    assert GREEDY.greedy and GREEDY.regime == 0
    p = SamplingParams(0.8, 0, 0.95)
    assert (
        not p.greedy
        and p.regime == 2
        and p == SamplingParams(0.8, 0, 0.95)
        and hash(p) == hash(SamplingParams(0.8, 0, 0.95))
    )


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(temperature=-1.0), "temperature"),
        (dict(temperature=1.0, top_k=-2), "top_k"),
        (dict(temperature=1.0, top_p=0.0), "top_p"),
        (dict(temperature=float("nan")), "temperature"),
    ],
)
def test_bad_sampling_params(kw, match):
    with pytest.raises(ConfigError, match=match):
        SamplingParams(**kw)


class Recorder(ContextDrafter):
    """Records what the session tells it."""

    name = "recorder"
    OPTIONS = ()
    DEFAULT_BUDGET = 4

    def __init__(self, vocab_size=16):
        super().__init__(vocab_size)
        self.told: list[tuple] = []

    def set_sampling(self, rid, sampling):
        self.told.append((rid, sampling))

    def propose(self, rids, budgets):
        return [DraftTree.single(int(self.context(r)[-1])) for r in rids]


def _view(rid, ctx, sampling=GREEDY):
    return RequestView(rid, len(ctx), ctx[-1], lambda: list(ctx), sampling)


def test_session_tells_the_drafter_once_and_on_change():
    d = Recorder()
    s = DraftSession(d)
    hot = SamplingParams(0.8, 0, 0.95)
    ctx = {"a": [1, 2, 3], "b": [4, 5]}
    s.propose([_view("a", ctx["a"], hot), _view("b", ctx["b"])], 4)
    assert d.told == [("a", hot)]  # greedy is what a drafter assumes: nothing to tell
    for rid in ctx:
        s.observe([rid], np.array([7]), np.array([1]))
        ctx[rid] = ctx[rid] + [7]
    s.propose([_view("a", ctx["a"], SamplingParams(0.8, 0, 0.95)), _view("b", ctx["b"])], 4)
    assert d.told == [("a", hot)]  # equal settings: not told again
    cold = SamplingParams(0.6)
    s.propose([_view("a", ctx["a"], cold)], 4)
    assert d.told[-1] == ("a", cold)
    # a restart (length mismatch) starts the drafter afresh: it is told again
    s.propose([_view("a", ctx["a"] + [9, 9], cold)], 4)
    assert d.told[-1] == ("a", cold) and len(d.told) == 3


def test_sglang_sampling_of_normalised_params():
    from specplug.adapters.sglang.bridge import sampling_of

    assert sampling_of(None) is GREEDY
    assert sampling_of(SimpleNamespace(temperature=1.0, top_k=1, top_p=1.0)) is GREEDY  # SGLang's greedy
    got = sampling_of(SimpleNamespace(temperature=0.8, top_k=1 << 30, top_p=0.95))
    assert got == SamplingParams(0.8, 0, 0.95)
    assert sampling_of(SimpleNamespace(temperature=0.7, top_k=20, top_p=1.0)) == SamplingParams(0.7, 20, 1.0)


def test_tgi_request_sampling():
    from specplug.adapters.tgi.runtime import request_sampling

    assert request_sampling(None) is GREEDY
    assert request_sampling(SimpleNamespace(do_sample=False, temperature=0.5, top_k=0, top_p=1.0)) is GREEDY
    got = request_sampling(SimpleNamespace(do_sample=True, temperature=0.8, top_k=0, top_p=0.95))
    assert got == SamplingParams(0.8, 0, 0.95)


def test_vllm_row_sampling():
    from specplug.adapters.vllm.runtime import row_sampling

    batch = SimpleNamespace(
        temperature_cpu=np.array([0.0, 0.8, 1.0], np.float32),
        top_p_cpu=np.array([1.0, 0.95, 1.0], np.float32),
        top_k_cpu=np.array([100, 100, 5], np.int32),
    )
    got = row_sampling(batch, 3, vocab_size=100)
    assert got[0] is GREEDY
    assert got[1].temperature == pytest.approx(0.8) and got[1].top_k == 0 and got[1].top_p == pytest.approx(0.95)
    assert got[2] == SamplingParams(1.0, 5, 1.0)
    assert row_sampling(SimpleNamespace(), 2, 100) == [GREEDY, GREEDY]
