"""TGI start-up hook, run from the ``specplug_tgi.pth`` line in site-packages.

The ``.pth`` line only reads one environment variable; when ``SPECPLUG_TGI_ALGORITHM``
is set it calls :func:`install`, which registers post-import hooks (standard library
only, no specplug algorithm code, no numpy, no torch). When TGI's server then imports
``text_generation_server.utils.tokens``, ``...models.flash_causal_lm`` and ``...cache``, the hooks
import :mod:`specplug.patches.tgi`, read the algorithm and its options
(``SPECPLUG_TGI_OPTIONS``: JSON object or path to a JSON file), check the TGI version
and patch those modules, once. A bad algorithm, option or TGI version makes that import
fail with a message naming the fix, so the shard stops instead of running unpatched.
"""

from specplug.plugins import env
from specplug.plugins.post_import import register_post_import_hook

__all__ = ["HOOKED_MODULES", "PTH_NAME", "PTH_LINE", "install", "installed"]

HOOKED_MODULES = (
    "text_generation_server.utils.tokens",
    "text_generation_server.models.flash_causal_lm",
    "text_generation_server.cache",
)
PTH_NAME = "specplug_tgi.pth"
# What the .pth file holds: site.py executes lines that start with "import". It names
# env.TGI_ALGORITHM literally (importing specplug to read the name would cost every interpreter).
PTH_LINE = (
    "import os; os.environ.get('SPECPLUG_TGI_ALGORITHM') and "
    "__import__('specplug.plugins.tgi_hook', fromlist=['install']).install()"
)

_installed = False


def _on_import(module):
    from specplug.patches import tgi

    tgi.on_module_imported(module)


def install():
    """Register the hooks when ``SPECPLUG_TGI_ALGORITHM`` is set; True if (already) installed."""
    global _installed
    if _installed:
        return True
    if not env.read(env.TGI_ALGORITHM):
        return False
    _installed = True
    for name in HOOKED_MODULES:
        register_post_import_hook(name, _on_import)
    return True


def installed():
    return _installed
