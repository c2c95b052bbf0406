"""The overlay images install what specplug imports (containers/, issue 14 item 8).

Each Dockerfile's specplug RUN line runs here as written (only /tmp/specplug and the image's
Python moved to temporary paths) in a fresh venv without system site-packages that stands in
for the engine's environment: torch 2.13.0 (the CPU wheel on this machine's disk),
transformers at this machine's version, and stubs of what engine images install in ways
`pip freeze` cannot write as constraints (an editable install, a wheel installed from a
file). Afterwards every registered drafter but the benchmark peers
(which need SGLang itself) imports in that venv, and no package of the stand-in changed
version. A negative control runs the images' former `--no-deps` line and requires RACER's
import to fail for want of numba.

SGLang's image has pip; TGI's venv is made by `uv sync`, which leaves no pip, so its stand-in
is a uv venv without pip and the install goes through uv 0.5.31 (the image's uv). Needs PyPI.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from importlib.metadata import version
from pathlib import Path

import pytest

from specplug.drafters import registry

# 70-200 s on this 2-core machine (two venvs with torch, three builds of specplug); needs PyPI.
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TORCH = "2.13.0+cpu"  # the local CPU wheel; any other torch downloads gigabytes
TRANSFORMERS = version("transformers")
UV = "0.5.31"  # what TGI 3.3.x's Dockerfile copies into the image
PYVER = f"{sys.version_info.major}.{sys.version_info.minor}"
OLD_SGLANG_LINE = "python3 -m pip install --no-cache-dir --no-deps /tmp/specplug"
DRAFTERS = sorted(s.name for s in registry.specs() if not s.peer)

IMPORT_ALL = """
import json, torch
from specplug.drafters import registry
names = sorted(s.name for s in registry.specs() if not s.peer and s.load_class())
print(json.dumps({"torch": torch.__version__, "drafters": names}))
"""
INSTALLED = """
import json, re
from importlib.metadata import distributions
print(json.dumps({re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower(): d.version for d in distributions()}))
"""


def _run(cmd, env, cwd, check=True):
    p = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    if check and p.returncode != 0:
        pytest.fail(f"{cmd} exited {p.returncode}:\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}")
    return p


def _dockerfile_run(name: str) -> str:
    """The RUN instruction that follows `COPY . /tmp/specplug`, continuation lines joined."""
    text = (REPO / "containers" / name).read_text()
    instructions = [
        i.strip() for i in re.sub(r"\\\n", " ", text).splitlines() if i.strip() and not i.lstrip().startswith("#")
    ]
    at = instructions.index("COPY . /tmp/specplug")
    assert instructions[at + 1].startswith("RUN "), instructions[at + 1]
    return instructions[at + 1][4:]


def _local_torch_wheel() -> Path:
    dirs = os.environ.get("PIP_FIND_LINKS", "").split() + ["/opt/wheels"]
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    for d in dirs:
        found = sorted(Path(d).glob(f"torch-{TORCH}-{tag}-{tag}-*.whl")) if Path(d).is_dir() else []
        if found:
            return found[0]
    pytest.fail(
        f"no local torch {TORCH} wheel for {tag} in {dirs}: the stand-in for the engine's "
        f"torch must not download another"
    )


def _stub_project(root: Path, name: str, ver: str) -> Path:
    """A project with no modules, for an editable install (name==version, metadata only)."""
    d = root / f"stub-{name}"
    d.mkdir()
    (d / "pyproject.toml").write_text(
        f'[build-system]\nrequires = ["setuptools>=64"]\nbuild-backend = "setuptools.build_meta"\n'
        f'[project]\nname = "{name}"\nversion = "{ver}"\n[tool.setuptools]\npackages = []\n'
    )
    return d


def _stub_wheel(root: Path, name: str, ver: str) -> Path:
    """A wheel holding only its metadata: installed from its path, pip freeze writes `name @ file://`."""
    dist = f"{name.replace('-', '_')}-{ver}"
    path = root / f"{dist}-py3-none-any.whl"
    files = {
        f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {ver}\n",
        f"{dist}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{dist}.dist-info/RECORD"] = "".join(f"{f},,\n" for f in files) + f"{dist}.dist-info/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as z:
        for f, body in files.items():
            z.writestr(f, body)
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    base = tmp_path_factory.mktemp("containers")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}
    env["UV_CACHE_DIR"] = str(base / "uv-cache")
    _run([sys.executable, "-m", "pip", "install", "-q", "--target", str(base / "uv"), f"uv=={UV}"], env, base)
    env["PATH"] = f"{base / 'uv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"  # as in both images
    yield base, env, _local_torch_wheel()
    shutil.rmtree(base, ignore_errors=True)


def _engine_venv(base: Path, env: dict, wheel: Path, engine: str) -> Path:
    """The engine's environment, stood in: its torch and transformers pins plus stubs."""
    venv = base / engine / "venv"
    seed = ["--seed"] if engine == "sglang" else []  # TGI's venv has no pip
    _run(["uv", "venv", "-q", *seed, "--python", sys.executable, str(venv)], env, base)
    py = str(venv / "bin" / "python")
    _run(
        [
            "uv",
            "pip",
            "install",
            "-q",
            "--python",
            py,
            "--find-links",
            str(wheel.parent),
            f"torch=={TORCH}",
            f"transformers=={TRANSFORMERS}",
            "setuptools",
        ],
        env,
        base,
    )
    if engine == "sglang":  # sglang: editable (`pip install -e python[all]`); sglang-router: a local wheel
        _run(
            [
                "uv",
                "pip",
                "install",
                "-q",
                "--python",
                py,
                "-e",
                str(_stub_project(base / engine, "sglang", "0.5.23")),
                str(_stub_wheel(base / engine, "sglang-router", "0.2.3")),
            ],
            env,
            base,
        )
    else:  # `uv sync` installs TGI's server project editable
        _run(
            [
                "uv",
                "pip",
                "install",
                "-q",
                "--python",
                py,
                "-e",
                str(_stub_project(base / engine, "text-generation-server", "2.0.5.dev0")),
            ],
            env,
            base,
        )
    return venv


def _source_copy(dest: Path) -> Path:
    """The build context `COPY . /tmp/specplug` puts in the image (the RUN line deletes it)."""
    skip = shutil.ignore_patterns(".git", "__pycache__", "*.egg-info", "build", "dist", ".pytest_cache", ".hypothesis")
    shutil.copytree(REPO, dest, ignore=skip)
    return dest


def _installed(py: str, env: dict, cwd: Path) -> dict:
    return json.loads(_run([py, "-c", INSTALLED], env, cwd).stdout)


@pytest.mark.parametrize("engine", ["sglang", "tgi"])
def test_overlay_install_keeps_engine_packages_and_imports_every_drafter(work, engine):
    base, env, wheel = work
    venv = _engine_venv(base, env, wheel, engine)
    py = str(venv / "bin" / "python")
    cwd = base / engine  # not the repository: `python -c` would import its specplug/
    env = dict(env, PATH=f"{venv / 'bin'}{os.pathsep}{env['PATH']}")  # `python3` is the image's Python
    before = _installed(py, env, cwd)
    assert before["torch"] == TORCH and before["transformers"] == TRANSFORMERS
    assert "numba" not in before and "specplug" not in before

    if engine == "sglang":
        # Negative control: the former line installs specplug without numba, and RACER fails.
        src = _source_copy(cwd / "src-old")
        _run(["/bin/sh", "-c", OLD_SGLANG_LINE.replace("/tmp/specplug", str(src))], env, cwd)
        p = _run([py, "-c", "import specplug.drafters.racer"], env, cwd, check=False)
        assert p.returncode != 0 and "No module named 'numba'" in p.stderr, p.stderr[-2000:]
        _run([py, "-m", "pip", "uninstall", "-q", "-y", "specplug"], env, cwd)
        assert _installed(py, env, cwd) == before

    line = _dockerfile_run(f"{engine}.Dockerfile")
    assert "containers/install_specplug.sh" in line
    src = _source_copy(cwd / "src")
    cmd = line.replace("/tmp/specplug", str(src)).replace("/usr/src/.venv", str(venv))
    cmd = cmd.replace("/python3.11/", f"/python{PYVER}/")
    p = _run(["/bin/sh", "-c", cmd], env, cwd)
    assert not src.exists()  # the RUN line cleaned up after itself

    after = _installed(py, env, cwd)
    changed = {n: (v, after.get(n)) for n, v in before.items() if after.get(n) != v}
    assert not changed, f"the install changed the engine's packages: {changed}"
    assert "numba" in after and after["specplug"] == version("specplug")

    out = json.loads(_run([py, "-c", IMPORT_ALL], env, cwd).stdout.strip().splitlines()[-1])
    assert out == {"torch": TORCH, "drafters": DRAFTERS}
    assert "racer" in DRAFTERS
