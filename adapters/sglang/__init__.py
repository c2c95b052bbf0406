"""SGLang adapter: specplug drafters behind SGLang's NGRAM tree-verification path.

``spec_algo.SpecplugSpecAlgo`` is the ``spec_class`` each algorithm is registered
with; ``worker.SpecplugWorker`` is the speculative worker SGLang instantiates, a thin
use of :class:`specplug.drafters.session.DraftSession` (the step loop); ``bridge``
translates SGLang's rows to and from the session and ``feedback`` brings verification
results to the host, both testable without SGLang; ``config`` reads the environment.
The SGLang code the worker relies on is pinned in :mod:`specplug.patches.sglang`.
Nothing here imports SGLang at package import time.
"""
