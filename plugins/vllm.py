"""vLLM plugin: loaded by the ``vllm.general_plugins`` entry point in every vLLM process.

``specplug = specplug.plugins.vllm:register``. vLLM loads general plugins before it has a
configuration (engine arguments, engine core, each worker), so the plugin cannot tell
whether a specplug proposer will run; it changes nothing. The patches
(:mod:`specplug.patches.vllm`) are applied by the specplug proposer itself, once per
process, when vLLM's model runner builds it. :func:`register` checks the version gate and
logs its verdict (a warning on an unsupported vLLM, without stopping vLLM: specplug being
installed must not break engines that do not use it; a specplug proposer then refuses to
start with the same message).
"""

from __future__ import annotations

import logging

__all__ = ["register"]

logger = logging.getLogger("specplug")
_registered = False


def register() -> None:
    """Idempotent (vLLM may load plugins several times per process)."""
    global _registered
    if _registered:
        return
    _registered = True
    from specplug.patches.base import PatchError
    from specplug.patches.vllm import VLLM_PATCHES

    try:
        VLLM_PATCHES.check_version()
    except PatchError as e:
        logger.warning("specplug: %s; specplug's proposers will refuse to start", e)
