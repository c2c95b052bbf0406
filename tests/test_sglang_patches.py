"""SGLang's version gate and pins (patches/sglang): the fingerprints are those of the installed
SGLang 0.5.23's code, they check in the real modules, and a changed source or another version
fails loudly naming the supported range (fake modules; no engine needed for those)."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from specplug.patches import sglang as sp
from specplug.patches.base import PatchError, PatchSet, source_fingerprint
from specplug.patches.sglang import version as sv

KERNELS = pathlib.Path(__file__).resolve().parents[1] / "integration_tests" / "sglang" / "cpu_kernels"


def installed_sglang() -> pathlib.Path:
    """The installed SGLang's package directory (skip unless it is a supported version)."""
    spec = importlib.util.find_spec("sglang")  # finds, does not import
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("SGLang is not installed; pip install --no-deps -r integration_tests/sglang/requirements-cpu.txt")
    try:
        sv.check_version(sv.sglang_version())
    except sv.SglangVersionError as e:
        pytest.skip(str(e))
    return pathlib.Path(list(spec.submodule_search_locations)[0])


def file_fingerprint(root: pathlib.Path, module: str, target: str) -> str | None:
    """:func:`source_fingerprint` of ``module.target`` read from its source file with ``ast``."""
    path = root.joinpath(*module.split(".")[1:]).with_suffix(".py")
    source = path.read_text(encoding="utf-8")
    node: ast.AST = ast.parse(source)
    for part in target.split("."):
        node = next(
            (
                n
                for n in ast.iter_child_nodes(node)
                if isinstance(n, (ast.ClassDef, ast.FunctionDef)) and n.name == part
            ),
            None,
        )
        if node is None:
            return None
    return source_fingerprint("\n".join(source.splitlines()[node.lineno - 1 : node.end_lineno]))


def test_every_pin_matches_the_installed_sglang_source():
    root = installed_sglang()
    found = {p.__name__: file_fingerprint(root, p.module, p.target) for p in sp.SGLANG_PATCHES.patch_types}
    assert found == {p.__name__: next(iter(p.fingerprints)) for p in sp.SGLANG_PATCHES.patch_types}
    assert all(issubclass(p, sp.Pin) and p.reason for p in sp.SGLANG_PATCHES.patch_types)


def test_version_gate_is_pyprojects_extra():
    text = (pathlib.Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert f'sglang = ["{sv.SUPPORTED_RANGE}"]' in text
    assert sp.SGLANG_PATCHES.supported == sv.SUPPORTED == ((0, 5, 23), (0, 5, 23))


def test_pins_check_in_the_real_modules():
    """What SpecplugWorker and the early-exit runner call at start-up, on the installed SGLang
    (a subprocess with the CPU start-up hook: SGLang's modules import sgl_kernel)."""
    installed_sglang()
    env = dict(
        os.environ,
        SGLANG_USE_CPU_ENGINE="1",
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(KERNELS)] + [p for p in [os.environ.get("PYTHONPATH")] if p]),
    )
    code = textwrap.dedent("""
        import importlib, json
        from specplug.patches import sglang as sp
        from specplug.adapters.sglang.early_exit import SUPPORTED_MODELS
        sp.check_worker()
        sp.check_worker()                       # once per process: a second call checks nothing twice
        for name in sp.DECODER_PINS:
            sp.check_decoder(name)
        classes = {name: getattr(importlib.import_module(module), name).__module__ == module
                   for name, (module, _) in SUPPORTED_MODELS.items()}
        print("RESULT" + json.dumps({"applied": sorted(type(p).__name__ for p in sp.SGLANG_PATCHES.applied),
                                     "version": sp.SGLANG_PATCHES.version, "classes": classes}))
    """)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    assert proc.returncode == 0 and line, proc.stderr[-3000:]
    out = json.loads(line[-1][len("RESULT") :])
    assert out["applied"] == sorted(p.__name__ for p in sp.SGLANG_PATCHES.patch_types)
    assert out["version"] == sv.sglang_version()
    assert out["classes"] == {name: True for name in sp.DECODER_PINS}


# ------------------------------------------------------------------ negative cases on a fake module
REAL = """
class NGRAMWorker:
    def clear_cache_pool(self):
        self.ngram_corpus.reset()
        self._prev_decode_rids = set()
"""


@pytest.fixture
def fake_worker_module(tmp_path, monkeypatch):
    """A module holding NGRAMWorker.clear_cache_pool, as 0.5.23 has it or changed."""
    monkeypatch.syspath_prepend(str(tmp_path))
    made = []

    def make(source: str):
        name = f"fake_sglang_ngram_worker_{len(made)}"
        (tmp_path / f"{name}.py").write_text(source)
        made.append(name)
        mod = importlib.import_module(name)

        class FakePin(sp.NgramWorkerClearCachePool):
            module = name

        return mod, FakePin

    yield make
    for name in made:
        sys.modules.pop(name, None)


def test_pin_checks_and_replaces_nothing(fake_worker_module):
    mod, pin_type = fake_worker_module(REAL)
    before = mod.NGRAMWorker.__dict__["clear_cache_pool"]
    pin = pin_type().apply()
    assert pin.applied and pin.original is before and mod.NGRAMWorker.__dict__["clear_cache_pool"] is before
    with pytest.raises(PatchError, match="already checked"):
        pin.apply()
    pin.revert()
    assert not pin.applied and mod.NGRAMWorker.__dict__["clear_cache_pool"] is before


def test_changed_sglang_code_fails_loudly_naming_the_supported_range(fake_worker_module):
    _, pin_type = fake_worker_module(REAL.replace("= set()", "= {}"))
    with pytest.raises(
        PatchError,
        match=r"SGLang's fake_sglang_ngram_worker_0\.NGRAMWorker\.clear_cache_pool "
        r"\(FakePin\): its code differs .*relies on it \(overridden: resets the "
        r"drafting session\)\. specplug supports sglang>=0\.5\.23,<0\.5\.24",
    ):
        pin_type().apply()


def test_missing_sglang_symbol_fails_loudly(fake_worker_module):
    _, pin_type = fake_worker_module("class NGRAMWorker:\n    pass\n")
    with pytest.raises(PatchError, match="has no 'NGRAMWorker.clear_cache_pool'.*sglang>=0.5.23,<0.5.24"):
        pin_type().apply()


@pytest.mark.parametrize("found", ["0.5.22", "0.5.24", "0.6.0", None])
def test_other_sglang_versions_are_refused_before_any_pin(found, fake_worker_module, monkeypatch):
    mod, pin_type = fake_worker_module(REAL)
    monkeypatch.setattr(sv, "sglang_version", lambda: found)
    pins = PatchSet("SGLang", sv.SUPPORTED, [pin_type], sv.detect_sglang_version, supported_text=sv.SUPPORTED_RANGE)
    with pytest.raises(PatchError, match=r"sglang>=0\.5\.23,<0\.5\.24") as e:
        pins.apply_for(mod)
    assert isinstance(e.value, sv.SglangVersionError) and not pins.applied
    assert ("not installed" if found is None else f"found sglang {found}") in str(e.value)


def test_check_modules_checks_each_module_once(fake_worker_module, monkeypatch):
    mod, pin_type = fake_worker_module(REAL)
    monkeypatch.setattr(sv, "sglang_version", lambda: "0.5.23")
    pins = PatchSet("SGLang", sv.SUPPORTED, [pin_type], sv.detect_sglang_version, supported_text=sv.SUPPORTED_RANGE)
    monkeypatch.setattr(sp, "SGLANG_PATCHES", pins)
    sp._check_modules([mod.__name__])
    sp._check_modules([mod.__name__])  # the second worker of a process: nothing refused
    assert [type(p) for p in pins.applied] == [pin_type] and pins.version == "0.5.23"
