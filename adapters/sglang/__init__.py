"""SGLang adapter: specplug drafters behind SGLang's NGRAM tree-verification path.

``spec_algo.SpecplugSpecAlgo`` is the ``spec_class`` each algorithm is registered
with; ``worker.SpecplugWorker`` is the speculative worker SGLang instantiates;
``bridge`` holds the engine-independent step logic (request lifecycle, packing,
feedback) so it can be tested without SGLang. Nothing here imports SGLang at
package import time.
"""
