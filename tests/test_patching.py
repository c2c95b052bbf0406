"""The generic patch mechanism (patches/base.py), post-import hooks and the TGI start-up
hook, on fake modules: no engine needed."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import textwrap
import types

import pytest

from specplug.patches.base import (
    Patch,
    PatchError,
    PatchSet,
    applied_patch,
    object_fingerprint,
    parse_version,
    source_fingerprint,
)
from specplug.plugins import env, post_import, tgi_hook


# ------------------------------------------------------------------ a fake engine module
def _decorate(fn):
    @functools.wraps(fn)
    def wrapper(*a, **k):
        return fn(*a, **k)

    return wrapper


CORE_SRC = textwrap.dedent("""
    def draft(x):
        return x + 1

    class Engine:
        def step(self, x):
            return draft(x) * 10

        @classmethod
        def make(cls):
            return cls()
""")


@pytest.fixture
def engine(tmp_path, monkeypatch):
    """Package ``fake_engine``: ``core`` with a function, a class (method, classmethod), and
    ``user``, which imported the function by name; removed afterwards."""
    pkg = tmp_path / "fake_engine"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "core.py").write_text(CORE_SRC)
    (pkg / "user.py").write_text("from fake_engine.core import draft\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import fake_engine.core as core
    import fake_engine.user as user

    yield core, user
    for name in [n for n in sys.modules if n == "fake_engine" or n.startswith("fake_engine.")]:
        del sys.modules[name]


class DraftPatch(Patch):
    module = "fake_engine.core"
    target = "draft"
    alias_prefix = "fake_engine."

    def replacement(self, original):
        def draft(x):
            return original(x) + 100

        return draft


class StepPatch(Patch):
    module = "fake_engine.core"
    target = "Engine.step"

    def replacement(self, original):
        def step(self, x):
            return -original(self, x)

        return step


class MakePatch(Patch):
    module = "fake_engine.core"
    target = "Engine.make"

    def replacement(self, original):
        def make(cls):
            obj = original(cls)
            obj.patched = True
            return obj

        return make


def test_patch_replaces_keeps_original_and_reverts(engine):
    core, user = engine
    orig = core.draft
    p = DraftPatch().apply()
    assert core.draft(1) == 102 and p.original is orig and core.draft.__wrapped__ is orig
    assert applied_patch(core.draft) is p
    assert user.draft is core.draft  # `from core import draft` alias rebound
    assert core.Engine().step(1) == 1020  # module global looked up at call time
    p.revert()
    assert core.draft is orig and user.draft is orig and applied_patch(core.draft) is None


def test_method_and_classmethod_patches(engine):
    core, _ = engine
    s, m = StepPatch().apply(), MakePatch().apply()
    assert core.Engine().step(1) == -20
    assert isinstance(core.Engine.__dict__["make"], classmethod) and core.Engine.make().patched
    s.revert()
    m.revert()
    assert core.Engine().step(1) == 20 and not hasattr(core.Engine.make(), "patched")


def test_double_patching_is_refused(engine):
    p = DraftPatch().apply()
    with pytest.raises(PatchError, match="already patched by DraftPatch"):
        DraftPatch().apply()

    class Other(DraftPatch):
        pass

    with pytest.raises(PatchError, match="already patched"):
        Other().apply()
    with pytest.raises(PatchError, match="already applied"):
        p.apply()
    p.revert()


def test_missing_symbol_and_module_fail_loudly(engine):
    class Missing(DraftPatch):
        target = "no_such_function"
        supported_text = "FakeEngine 1.2.x"

    with pytest.raises(PatchError, match=r"has no 'no_such_function'.*FakeEngine 1\.2\.x"):
        Missing().apply()

    class MissingClass(StepPatch):
        target = "Nope.step"

    with pytest.raises(PatchError, match="has no 'Nope'"):
        MissingClass().apply()

    class NotImported(DraftPatch):
        module = "fake_engine.absent"

    with pytest.raises(PatchError, match="not imported"):
        NotImported().apply()


def test_fingerprint_guards_changed_code(engine):
    core, _ = engine
    fp = source_fingerprint("def draft(x):\n    return x + 1\n")

    class Good(DraftPatch):
        fingerprints = frozenset({fp})

    class Bad(DraftPatch):
        fingerprints = frozenset({"0" * 16})

    with pytest.raises(PatchError, match="differs from the code"):
        Bad().apply()
    assert applied_patch(core.draft) is None
    Good().apply().revert()


def test_unreadable_source_is_patched_unchecked_with_a_warning(engine, caplog):
    core, _ = engine
    scope = {}
    exec("def draft(x):\n    return x + 1\n", scope)  # no source file to read
    core.draft = scope["draft"]

    class Bad(DraftPatch):
        fingerprints = frozenset({"0" * 16})

    p = Bad().apply()
    assert "cannot read the source" in caplog.text
    p.revert()


def test_source_fingerprint_ignores_decorators_and_indentation():
    plain = "def f(a):\n    return a\n"
    nested = "    @decorator(x)\n    def f(a):\n        return a   \n"
    assert source_fingerprint(plain) == source_fingerprint(nested)
    assert source_fingerprint(plain) != source_fingerprint(plain.replace("a\n", "a + 1\n"))
    decorated = _decorate(test_source_fingerprint_ignores_decorators_and_indentation)
    assert object_fingerprint(decorated) == object_fingerprint(
        test_source_fingerprint_ignores_decorators_and_indentation
    )


@pytest.mark.parametrize(
    "text,expected",
    [
        ("3.3.6", (3, 3, 6)),
        ("3.3.6-dev0", (3, 3, 6)),
        ("text-generation-launcher 3.3.5", (3, 3, 5)),
        ("v3.3.7", (3, 3, 7)),
        ("nightly", None),
    ],
)
def test_parse_version(text, expected):
    assert parse_version(text) == expected


def test_patch_set_checks_version_once_and_refuses_twice(engine):
    core, _ = engine
    calls = []

    def detect():
        calls.append(1)
        return "1.2.3-dev0", "test"

    ps = PatchSet("FakeEngine", ((1, 2, 0), (1, 2, 9)), [DraftPatch, StepPatch], detect)
    applied = ps.apply_for(core)
    assert [type(p) for p in applied] == [DraftPatch, StepPatch] and ps.version == "1.2.3-dev0"
    assert ps.apply_for(types.ModuleType("fake_engine.other")) == []
    assert len(calls) == 1
    with pytest.raises(PatchError, match="twice"):
        ps.apply_for(core)
    ps.revert_all()
    assert applied_patch(core.draft) is None and applied_patch(core.Engine.__dict__["step"]) is None


@pytest.mark.parametrize("version", ["1.1.9", "1.3.0", "weird"])
def test_patch_set_refuses_unsupported_version_naming_range(engine, version):
    core, _ = engine
    ps = PatchSet("FakeEngine", ((1, 2, 0), (1, 2, 9)), [DraftPatch], lambda: (version, "test"))
    with pytest.raises(PatchError, match=r"FakeEngine 1\.2\.0 through 1\.2\.9"):
        ps.apply_for(core)
    assert applied_patch(core.draft) is None


def test_patch_set_checks_all_before_applying_any(engine):
    core, _ = engine

    class Broken(StepPatch):
        target = "Engine.absent"

    ps = PatchSet("FakeEngine", ((1, 0, 0), (2, 0, 0)), [DraftPatch, Broken], lambda: ("1.5.0", "t"))
    with pytest.raises(PatchError, match="absent"):
        ps.apply_for(core)
    assert applied_patch(core.draft) is None and not ps.applied


# ------------------------------------------------------------------ post-import hooks
@pytest.fixture
def modpath(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [n for n in sys.modules if n.startswith("sp_hooktest")]:
        del sys.modules[name]
    post_import.remove_post_import_hooks()


def test_post_import_hook_runs_once_after_import(modpath):
    (modpath / "sp_hooktest_a.py").write_text("VALUE = 1\n")
    seen = []
    post_import.register_post_import_hook("sp_hooktest_a", lambda m: seen.append(m.VALUE))
    assert post_import.pending_hooks() == {"sp_hooktest_a": 1}
    import sp_hooktest_a  # noqa: F401

    assert seen == [1] and post_import.pending_hooks() == {}
    post_import.register_post_import_hook("sp_hooktest_a", lambda m: seen.append(2))  # already imported
    assert seen == [1, 2]


def test_post_import_hook_in_a_package(modpath):
    pkg = modpath / "sp_hooktest_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "sub.py").write_text("X = 'sub'\n")
    seen = []
    post_import.register_post_import_hook("sp_hooktest_pkg.sub", lambda m: seen.append(m.X))
    import sp_hooktest_pkg  # noqa: F401

    assert seen == []
    from sp_hooktest_pkg import sub  # noqa: F401

    assert seen == ["sub"]


def test_failing_hook_fails_the_import_every_time(modpath):
    (modpath / "sp_hooktest_b.py").write_text("VALUE = 1\n")

    def refuse(module):
        raise PatchError("unsupported engine")

    post_import.register_post_import_hook("sp_hooktest_b", refuse)
    for _ in range(2):
        with pytest.raises(PatchError, match="unsupported engine"):
            import sp_hooktest_b  # noqa: F401
        assert "sp_hooktest_b" not in sys.modules


# ------------------------------------------------------------------ the .pth start-up hook
PTH_FILE = os.path.join(os.path.dirname(__file__), "..", "plugins", tgi_hook.PTH_NAME)


def test_pth_file_is_the_documented_line():
    with open(PTH_FILE) as f:
        lines = [line.rstrip("\n") for line in f if line.strip()]
    assert lines == [tgi_hook.PTH_LINE]
    assert lines[0].startswith("import ")  # site.py executes only lines starting with import


def test_pth_line_names_the_declared_variable():
    # the line stays a literal one-liner (no specplug import to read the name): keep it in step
    assert f"os.environ.get({env.TGI_ALGORITHM!r})" in tgi_hook.PTH_LINE
    assert env.TGI_ALGORITHM in env.VARIABLES


def _run_pth(env_value):
    environ = {k: v for k, v in os.environ.items() if k != env.TGI_ALGORITHM}
    if env_value is not None:
        environ[env.TGI_ALGORITHM] = env_value
    code = (
        f"exec({tgi_hook.PTH_LINE!r})\n"
        "import sys\n"
        "print(sorted(m for m in sys.modules if m.startswith('specplug')), "
        "type(sys.meta_path[0]).__name__, 'numpy' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environ, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_pth_line_does_nothing_without_the_variable():
    assert _run_pth(None).startswith("[] ")
    assert _run_pth("").startswith("[] ")


def test_pth_line_installs_cheap_hooks_with_the_variable():
    out = _run_pth("pld")
    assert "'specplug.plugins.tgi_hook'" in out and "'specplug.patches" not in out
    assert out.endswith("_Finder False")  # finder first on meta_path; numpy not imported


def test_install_registers_the_tgi_modules(monkeypatch):
    monkeypatch.setattr(tgi_hook, "_installed", False)
    monkeypatch.delenv(env.TGI_ALGORITHM, raising=False)
    assert tgi_hook.install() is False
    monkeypatch.setenv(env.TGI_ALGORITHM, "pld")
    try:
        assert tgi_hook.install() is True and tgi_hook.install() is True
        assert post_import.pending_hooks() == {name: 1 for name in tgi_hook.HOOKED_MODULES}
    finally:
        post_import.remove_post_import_hooks()
    from specplug.patches import tgi

    assert (
        set(tgi_hook.HOOKED_MODULES)
        == set(tgi.TGI_PATCHES.modules)
        == {tgi.TOKENS_MODULE, tgi.FLASH_MODULE, tgi.CACHE_MODULE}
    )
