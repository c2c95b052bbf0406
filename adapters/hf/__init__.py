"""Embedded default engine: transformers causal LMs with tree attention, on the CPU."""
