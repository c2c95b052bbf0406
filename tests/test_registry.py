"""The algorithm table: lookup, option validation, option loading, creation, registration,
and the budget range."""

from __future__ import annotations

import json

import numpy as np
import pytest

from specplug.drafters import registry
from specplug.drafters.base import MAX_BUDGET, MIN_BUDGET, check_budget
from specplug.drafters.errors import ConfigError, SpecplugError
from specplug.drafters.pld import PromptLookupDrafter
from specplug.drafters.registry import AlgorithmSpec, Option


class ToyDrafter(PromptLookupDrafter):
    """PLD under another name with narrower options: what an entry reads from its class."""

    name = "toy-algo"
    OPTIONS = (
        Option("max_ngram", int, 3, "n", 1, 8),
        Option("min_ngram", int, 1, "n", 1, 8),
        Option("max_draft", int, 4, "d", 1, 16),
    )
    DEFAULT_BUDGET = 5


@pytest.fixture
def table(monkeypatch):
    """A private copy of the table, so registrations here do not leak."""
    monkeypatch.setattr(registry, "_TABLE", dict(registry._TABLE))
    spec = AlgorithmSpec(name="toy-algo", drafter=f"{__name__}:ToyDrafter", description="test entry")
    registry.register(spec)
    return spec


def test_unknown_algorithm_lists_available_names():
    with pytest.raises(ConfigError) as e:
        registry.get("no-such-algo")
    msg = str(e.value)
    assert "no-such-algo" in msg
    for name in registry.names():
        assert name in msg
    assert {"ar", "pld"} <= set(registry.names())
    assert isinstance(e.value, SpecplugError) and isinstance(e.value, ValueError)


def test_lookup_is_case_and_underscore_insensitive(table):
    assert registry.get(" TOY_ALGO ") is table
    assert table.engine_name == "TOY_ALGO"
    assert registry.names() == sorted(registry.names())
    assert [s.name for s in registry.specs()] == registry.names()


def test_options_defaults_and_checks(table):
    assert registry.validate_options("toy-algo", None) == {"max_ngram": 3, "min_ngram": 1, "max_draft": 4}
    assert registry.validate_options("toy-algo", {"max_draft": 7.0}) == {"max_ngram": 3, "min_ngram": 1, "max_draft": 7}
    with pytest.raises(ConfigError, match=r"unknown option.*'bogus'.*valid options: max_ngram, min_ngram, max_draft"):
        registry.validate_options("toy-algo", {"bogus": 1})
    with pytest.raises(ConfigError, match="must be an integer"):
        registry.validate_options("toy-algo", {"max_draft": "4"})
    with pytest.raises(ConfigError, match="must be an integer"):
        registry.validate_options("toy-algo", {"max_draft": True})
    with pytest.raises(ConfigError, match="must be an integer"):
        registry.validate_options("toy-algo", {"max_draft": 2.5})
    with pytest.raises(ConfigError, match=r"'max_draft'.*\[1, 16\].*17"):
        registry.validate_options("toy-algo", {"max_draft": 17})
    with pytest.raises(ConfigError, match=r"\[1, 16\]"):
        registry.validate_options("toy-algo", {"max_draft": 0})


@pytest.mark.parametrize(
    "opt,good,bad,match",
    [
        (
            Option("f", float, 0.5, "h", 0.0, 1.0),
            [(0, 0.0), (1, 1.0), (0.25, 0.25)],
            [True, "0.5", 1.5, -0.1, float("nan"), None],
            "number|lie in",
        ),
        (Option("b", bool, False, "h"), [(True, True), (False, False)], [1, 0, "true", None], "true or false"),
        (Option("c", str, "a", "h", choices=("a", "b")), [("b", "b")], ["z", 3], "one of|type str"),
    ],
)
def test_option_types(opt, good, bad, match):
    for given, want in good:
        got = opt.check("algo", given)
        assert got == want and type(got) is type(want)
    for value in bad:
        with pytest.raises(ConfigError, match=match):
            opt.check("algo", value)


def test_option_describe():
    assert "in [1, 8]" in Option("n", int, 3, "help text", 1, 8).describe()
    assert "one of ['a', 'b']" in Option("c", str, "a", "h", choices=("a", "b")).describe()


def test_load_options_from_string_file_and_errors(tmp_path):
    assert registry.load_options(None) == {} and registry.load_options("  ") == {}
    assert registry.load_options('{"max_ngram": 5, "x": [1]}') == {"max_ngram": 5, "x": [1]}
    f = tmp_path / "opts.json"
    f.write_text(json.dumps({"max_draft": 9}))
    assert registry.load_options(str(f)) == {"max_draft": 9}
    with pytest.raises(ConfigError, match="not valid JSON"):
        registry.load_options('{"max_ngram": }')
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    with pytest.raises(ConfigError, match="not valid JSON"):
        registry.load_options(str(bad))
    arr = tmp_path / "arr.json"
    arr.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="JSON object"):
        registry.load_options(str(arr))
    with pytest.raises(ConfigError, match="no file at"):
        registry.load_options(str(tmp_path / "missing.json"))


def test_create_returns_the_registered_class(table):
    d = registry.create("toy-algo", 100, {"max_ngram": 5})
    assert type(d) is ToyDrafter
    assert (d.vocab_size, d.max_ngram, d.min_ngram, d.max_draft) == (100, 5, 1, 4)
    assert type(registry.create("pld", 50)) is PromptLookupDrafter
    with pytest.raises(ConfigError, match="unknown option"):
        registry.create("pld", 50, {"nope": 1})
    with pytest.raises(ConfigError, match="no-such"):
        registry.create("no-such", 50)


def test_every_registered_class_loads():
    for spec in registry.specs():
        cls = spec.load_class()
        assert cls.name == spec.name
        registry.validate_options(spec.name, {})  # defaults pass their own checks
        assert MIN_BUDGET <= spec.default_budget <= MAX_BUDGET


def test_entries_read_their_class(table):
    assert table.options is ToyDrafter.OPTIONS and table.default_budget == 5
    assert not table.uses_target_topk and table.needs_runner is None and dict(table.extra) == {}
    for name in ("del", "early-exit"):
        spec = registry.get(name)
        assert spec.needs_runner == "early_exit" and spec.extra.get("needs_runner") == "early_exit"
    for spec in registry.specs():
        cls = spec.load_class()
        assert spec.uses_target_topk == cls.uses_target_topk and spec.needs_runner == cls.needs_runner
        assert spec.options is cls.OPTIONS and spec.default_budget == cls.DEFAULT_BUDGET


@pytest.mark.parametrize(
    "attrs, match",
    [
        ({"name": "pld"}, "set name = 'toy-bad'"),
        ({"OPTIONS": [Option("x", int, 1, "h")]}, "tuple of Option"),
        ({"OPTIONS": (Option("x", int, 1, "h"), Option("x", int, 2, "h"))}, "twice"),
        ({"OPTIONS": (Option("x", int, 0, "h", 1, 4),)}, "must lie in"),
        ({"DEFAULT_BUDGET": 0}, "DEFAULT_BUDGET"),
    ],
)
def test_nonconforming_class_is_refused_on_first_use(table, monkeypatch, attrs, match):
    bad = type("BadDrafter", (ToyDrafter,), {"name": "toy-bad", **attrs})
    monkeypatch.setattr(registry, "_CLASSES", dict(registry._CLASSES))
    monkeypatch.setitem(globals(), "BadDrafter", bad)
    spec = registry.register(AlgorithmSpec(name="toy-bad", drafter=f"{__name__}:BadDrafter", description="x"))
    assert spec.engine_name == "TOY_BAD"  # reading the table needs no class
    with pytest.raises(TypeError, match=match):
        registry.validate_options("toy-bad", {})


def test_register_idempotent_and_conflicts(table):
    before = registry.names()
    assert registry.register(table) is table
    same = AlgorithmSpec(**{f: getattr(table, f) for f in table.__dataclass_fields__})
    registry.register(same)
    assert registry.names() == before
    other = AlgorithmSpec(name="toy-algo", drafter=table.drafter, description="different")
    with pytest.raises(ConfigError, match="already registered"):
        registry.register(other)
    assert registry.get("toy-algo") == table


@pytest.mark.parametrize("budget", [1, 2, 64, 1024, np.int64(7), np.int32(1024)])
def test_check_budget_accepts(budget):
    assert check_budget(budget) == int(budget) and type(check_budget(budget)) is int


@pytest.mark.parametrize("budget", [0, -1, 1025, True, False, 4.0, 1.5, "8", None, np.float64(4)])
def test_check_budget_rejects(budget):
    with pytest.raises(ConfigError, match=r"1\.\.1024"):
        check_budget(budget)
