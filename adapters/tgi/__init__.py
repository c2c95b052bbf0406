"""specplug.adapters.tgi: TGI's chain speculation onto the core's DraftSession (no TGI imports).

The TGI patches (:mod:`specplug.patches.tgi`) call the controller of :mod:`.speculation`
at TGI's drafting point; see README.md beside this file for what TGI can and cannot host.
"""

from .runtime import ChainSpeculation, tgi_chain
from .speculation import TgiSpeculation

__all__ = ["ChainSpeculation", "TgiSpeculation", "tgi_chain"]
