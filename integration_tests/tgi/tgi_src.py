"""Locate TGI's server source tree for the TGI integration tests (no TGI import here)."""

from __future__ import annotations

import importlib
import os
import sys

ENV = "TGI_SERVER_SRC"
HOW = (
    "these tests drive TGI's real text_generation_server code: get a TGI v3.3.5-v3.3.7 checkout, "
    "run `bash integration_tests/tgi/setup_tgi_src.sh <checkout>` and set "
    f"{ENV}=<checkout>/server (integration_tests/tgi/README.md)"
)


def prepare() -> str | None:
    """Put ``$TGI_SERVER_SRC`` on sys.path and import TGI's chooser module; return a skip
    reason (None when usable)."""
    src = os.environ.get(ENV, "").strip()
    if not src:
        return f"{ENV} is not set; {HOW}"
    if not os.path.isdir(os.path.join(src, "text_generation_server")):
        return f"{ENV}={src} has no text_generation_server/; {HOW}"
    if not os.path.isfile(os.path.join(src, "text_generation_server", "pb", "generate_pb2.py")):
        return f"TGI's protobuf stubs are not generated in {src}; {HOW}"
    if src not in sys.path:
        sys.path.insert(0, src)
    try:
        importlib.import_module("text_generation_server.utils.tokens")
    except Exception as e:  # missing loguru/peft/outlines, ...
        return f"cannot import text_generation_server.utils.tokens from {src} ({type(e).__name__}: {e}); {HOW}"
    return None
