"""A test-only CPU stand-in for ``intel_extension_for_pytorch`` (IPEX), pure torch.

TGI's server selects ``SYSTEM == "ipex"`` when a package of this name is importable
(``text_generation_server/utils/import_utils.py``) and then calls IPEX's fused CPU kernels.
This package implements the ones a Llama model reaches, with IPEX's signatures and
in-place semantics, each vectorised over the batch (``llm.functional``, ``llm.modules``);
every other name TGI imports exists and raises ``NotImplementedError`` naming itself when
used. It is not IPEX and is not fast: it lets specplug's tests run TGI's real model server
on a CPU. Unit tests: ``integration_tests/tgi/test_ipex_cpu.py``.
"""

from __future__ import annotations

from . import distributed, llm

__all__ = ["distributed", "llm", "IS_STAND_IN"]
__version__ = "0.0.0+specplug.cpu.stand.in"

#: tells tests (and people) that this is not the real IPEX
IS_STAND_IN = True
