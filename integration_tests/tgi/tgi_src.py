"""Locate TGI's server source tree and its isolated dependencies (no TGI import here)."""

from __future__ import annotations

import importlib
import os
import pathlib
import sys

ENV = "TGI_SERVER_SRC"
DEPS_ENV = "TGI_DEPS"
HOW = (
    "these tests drive TGI's real text_generation_server code: get a TGI v3.3.5-v3.3.7 checkout, "
    "run `bash integration_tests/tgi/setup_tgi_src.sh <checkout>` and set "
    f"{ENV}=<checkout>/server (integration_tests/tgi/README.md)"
)


def server_src() -> str:
    return os.environ.get(ENV, "").strip()


def deps_dir() -> pathlib.Path:
    """TGI's pinned dependencies, installed by setup_tgi_src.sh (``$TGI_DEPS``, default
    ``<checkout>/.specplug-deps``)."""
    explicit = os.environ.get(DEPS_ENV, "").strip()
    return pathlib.Path(explicit) if explicit else pathlib.Path(server_src()).resolve().parent / ".specplug-deps"


def source_reason() -> str | None:
    """Why the checkout cannot be used (None when it can), without importing it."""
    src = server_src()
    if not src:
        return f"{ENV} is not set; {HOW}"
    if not os.path.isdir(os.path.join(src, "text_generation_server")):
        return f"{ENV}={src} has no text_generation_server/; {HOW}"
    if not os.path.isfile(os.path.join(src, "text_generation_server", "pb", "generate_pb2.py")):
        return f"TGI's protobuf stubs are not generated in {src}; {HOW}"
    if not deps_dir().is_dir():
        return f"TGI's dependencies are not installed in {deps_dir()} (set {DEPS_ENV} or run the set-up); {HOW}"
    return None


def prepare() -> str | None:
    """Put ``$TGI_SERVER_SRC`` on sys.path (TGI's dependencies after this environment's own,
    so its transformers stays) and import TGI's chooser module; return a skip reason (None
    when usable)."""
    reason = source_reason()
    if reason:
        return reason
    src = server_src()
    if src not in sys.path:
        sys.path.insert(0, src)
    deps = str(deps_dir())
    if deps not in sys.path:
        sys.path.append(deps)  # fills in grpc, outlines, ...; never shadows this environment
    try:
        importlib.import_module("text_generation_server.utils.tokens")
    except Exception as e:  # missing loguru/peft/outlines, ...
        return f"cannot import text_generation_server.utils.tokens from {src} ({type(e).__name__}: {e}); {HOW}"
    return None
