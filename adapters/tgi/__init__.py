"""specplug.adapters.tgi: engine-free bookkeeping for TGI's chain speculation.

The TGI patches (:mod:`specplug.patches.tgi`) call :class:`ChainSpeculation` at TGI's
drafting point; see README.md beside this file for what TGI can and cannot host.
"""
from .runtime import ChainSpeculation, consistent, pad_chain, split_accepted, tgi_chain

__all__ = ["ChainSpeculation", "consistent", "pad_chain", "split_accepted", "tgi_chain"]
