"""Startup hook for SGLang-on-CPU tests (this directory goes on PYTHONPATH, so it also
runs in SGLang's scheduler and detokenizer subprocesses).

- ``sgl_kernel`` resolves to the pure-torch stand-in next to this file;
- ``torchvision`` (whose CUDA-built wheels do not load against CPU torch) becomes an
  inert stub if the real one cannot be imported; SGLang imports it only for
  multimodal processors;
- when ``sglang.srt.runtime_context`` is imported, the platform fact ``has_amx`` is
  forced on, so ``--attention-backend intel_amx`` is kept (SGLang would otherwise
  silently fall back to ``torch_native``, which cannot verify trees).

Set SPECPLUG_CPU_KERNELS=0 to disable.
"""

import os

if os.environ.get("SPECPLUG_CPU_KERNELS", "1") != "0":
    from _specplug_cpu_startup import install

    install()
