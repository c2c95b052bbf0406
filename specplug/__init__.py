"""specplug: speculative-decoding algorithms as a plugin for SGLang, TGI and transformers."""

__version__ = "0.1.0"
