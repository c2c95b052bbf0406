"""``ipex.llm``: the fused functions and the paged-attention module TGI calls."""

from __future__ import annotations

from .. import _missing
from . import functional, modules

#: weight-only quantisation (GPTQ/AWQ on IPEX) is not reached by unquantised models
quantization = _missing.Namespace("llm.quantization", ["IPEXWeightOnlyQuantizedLinear", "QuantMethod", "QuantDtype"])

__all__ = ["functional", "modules", "quantization"]
