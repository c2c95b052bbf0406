"""Which TGI is running.

TGI's Python server reports the same package version (2.0.5-dev0) in every 3.x
release, so the version comes from the TGI build itself, first found of:

1. the launcher that started this shard (``/proc/<parent>/exe``, the binary whose
   ``--version`` prints ``text-generation-launcher 3.3.6-dev0``), else the
   ``text-generation-launcher`` on ``PATH`` (both hold in the official images);
2. a TGI source checkout around the imported server package (``Cargo.toml``'s
   ``[workspace.package] version``), for tests against TGI's source tree;
3. ``SPECPLUG_TGI_VERSION``, for deployments where neither exists.

The tags v3.3.6 and v3.3.7 both carry the workspace version ``3.3.6-dev0`` (so do the
binaries built from them); a ``-devN`` build counts as its release.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys

from specplug.plugins import env

__all__ = [
    "ENV_VERSION",
    "LAUNCHER",
    "SUPPORTED",
    "SUPPORTED_TEXT",
    "detect_tgi_version",
    "launcher_version",
    "checkout_version",
]

ENV_VERSION = env.TGI_VERSION
LAUNCHER = "text-generation-launcher"
SUPPORTED = ((3, 3, 5), (3, 3, 7))
SUPPORTED_TEXT = (
    "TGI 3.3.5, 3.3.6 and 3.3.7 (images ghcr.io/huggingface/text-generation-inference:"
    "3.3.5 and :3.3.6; builds of the v3.3.6 and v3.3.7 tags report 3.3.6-dev0)"
)


def _run_version(binary: str) -> str | None:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    text = (out.stdout or out.stderr).strip()
    return text if re.search(r"\d+\.\d+\.\d+", text) else None


def launcher_version() -> tuple[str, str] | None:
    """``("3.3.6-dev0", "text-generation-launcher --version")`` from the parent launcher or PATH."""
    candidates = []
    try:
        exe = os.readlink(f"/proc/{os.getppid()}/exe")
        if os.path.basename(exe).startswith(LAUNCHER):
            candidates.append(exe)
    except OSError:
        pass
    on_path = shutil.which(LAUNCHER)
    if on_path:
        candidates.append(on_path)
    for binary in candidates:
        text = _run_version(binary)
        if text:
            version = text.split()[-1]
            return version, f"{binary} --version"
    return None


def checkout_version(server_package_file: str | None) -> tuple[str, str] | None:
    """The workspace version of the TGI source checkout holding ``text_generation_server``."""
    if not server_package_file:
        return None
    # <checkout>/server/text_generation_server/__init__.py -> <checkout>/Cargo.toml
    root = pathlib.Path(server_package_file).resolve().parent.parent.parent
    cargo = root / "Cargo.toml"
    if not (root / "server").is_dir() or not cargo.is_file():
        return None
    m = re.search(
        r"\[workspace\.package\][^\[]*?^version\s*=\s*\"([^\"]+)\"",
        cargo.read_text(encoding="utf-8", errors="replace"),
        re.M | re.S,
    )
    return None if m is None else (m.group(1), f"{cargo}")


def detect_tgi_version() -> tuple[str, str]:
    """(version text, how it was found); raises PatchError when nothing tells."""
    from specplug.patches.base import PatchError

    found = launcher_version()
    if found is None:
        pkg = sys.modules.get("text_generation_server")
        found = checkout_version(getattr(pkg, "__file__", None))
    if found is None and env.read(ENV_VERSION):
        found = env.read(ENV_VERSION), f"${ENV_VERSION}"
    if found is None:
        raise PatchError(
            f"cannot tell which TGI version is running (no {LAUNCHER} as parent or on "
            f"PATH, no TGI source checkout); set {ENV_VERSION} to it. specplug supports "
            f"{SUPPORTED_TEXT}"
        )
    return found
