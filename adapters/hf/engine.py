"""The embedded engine: a transformers causal LM with tree attention, driven by any drafter.

    engine = HFEngine.load(dtype="auto")         # default SmolLM2-135M-Instruct, CPU, bf16 where native
    ids = engine.encode(messages=[{"role": "user", "content": "Hi"}])
    [res] = engine.generate([ids], registry.create("pld", engine.vocab_size), 11, GenerationConfig())

Greedy output is token-identical to autoregressive decoding (the AR baseline is
``registry.create("ar", vocab)`` with budget 1 through the same loop). See ``decode.py``
for the step loop and ``kv.py`` for the cache.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch

from specplug.drafters.base import Drafter, check_budget
from specplug.drafters.errors import ConfigError

from .config import GenerationConfig, GenerationResult, SamplingConfig
from .decode import DecodeBatch
from .invariant import invariant_supported, make_invariant
from .models import load_model
from .precision import dtype_label, resolve_dtype

__all__ = ["HFEngine", "GenerationConfig", "GenerationResult", "SamplingConfig"]

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"


def _as_ids(value) -> set[int]:
    if value is None:
        return set()
    if isinstance(value, (list, tuple, set)):
        return {int(v) for v in value if v is not None}
    return {int(value)}


class HFEngine:
    """A loaded model + tokenizer; ``generate`` runs speculative decoding on a batch."""

    def __init__(
        self, model, tokenizer=None, *, eos_token_ids: Sequence[int] | None = None, model_name: str | None = None
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        cfg = model.config
        out = model.get_output_embeddings()
        self.vocab_size = int(out.weight.shape[0]) if out is not None else int(cfg.vocab_size)
        self.max_context = int(getattr(cfg, "max_position_embeddings", None) or 1 << 20)
        if eos_token_ids is None:
            eos = _as_ids(getattr(tokenizer, "eos_token_id", None))
            gen_cfg = getattr(model, "generation_config", None)
            eos |= _as_ids(getattr(gen_cfg, "eos_token_id", None))
            eos |= _as_ids(getattr(cfg, "eos_token_id", None))
        else:
            eos = _as_ids(list(eos_token_ids))
        self.eos_token_ids = tuple(sorted(t for t in eos if 0 <= t < self.vocab_size))
        p = next(model.parameters())
        self.device, self.dtype = str(p.device), p.dtype
        self.model_name = model_name or str(getattr(cfg, "_name_or_path", "") or type(model).__name__)

    @classmethod
    def load(cls, model_path: str | None = None, device: str = "cpu", dtype: str | torch.dtype = "fp32") -> HFEngine:
        """The default model (``model_path=None``) or a local Hugging Face model directory.

        ``dtype``: ``"auto"`` (what the CLI uses: bf16 on a CPU with native bf16, else
        fp32), ``"bf16"``, ``"fp32"`` or a torch dtype. bf16 runs on the batch-invariant
        kernels (:mod:`.invariant`), without which greedy verification would not be
        token-identical to autoregressive decoding; a model or device they do not cover
        gets fp32 under ``auto`` and a ConfigError when bf16 is asked for.
        """
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError):
            raise ConfigError(f"unknown device {device!r}; use 'cpu' or 'cuda'") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device 'cuda' asked for, but torch sees no CUDA GPU; use --device cpu")
        want = resolve_dtype(dtype, str(dev))
        model, tokenizer = load_model(model_path, dtype=want)
        model.to(dev)
        if want in (torch.bfloat16, torch.float16):
            why = invariant_supported(model)
            if why is None:
                make_invariant(model)
            elif str(dtype).lower() == "auto":
                model.to(torch.float32)
            else:
                raise ConfigError(
                    f"{dtype_label(want)} verification would not be lossless here ({why}); use --dtype fp32"
                )
        return cls(model, tokenizer, model_name=str(model_path) if model_path else DEFAULT_MODEL_NAME)

    # ------------------------------------------------------------------ text in
    def encode(self, prompt: str | None = None, messages: list[dict] | None = None) -> list[int]:
        """Token ids of a plain prompt, or of chat messages through the chat template."""
        if (prompt is None) == (messages is None):
            raise ConfigError("give either a prompt or chat messages")
        if self.tokenizer is None:
            raise ConfigError("this engine has no tokenizer; pass token ids to generate()")
        if messages is not None:
            if not messages or not all(isinstance(m, dict) and str(m.get("content", "")).strip() for m in messages):
                raise ConfigError("chat messages must be non-empty dicts with a 'role' and a non-empty 'content'")
            if not getattr(self.tokenizer, "chat_template", None):
                raise ConfigError(f"model {self.model_name} has no chat template; pass a plain prompt instead")
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            if not str(prompt).strip():
                raise ConfigError("the prompt is empty")
            ids = self.tokenizer(prompt)["input_ids"]
        ids = [int(t) for t in ids]
        self._check_prompt(ids)
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        if self.tokenizer is None:
            raise ConfigError("this engine has no tokenizer")
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def _check_prompt(self, ids: Sequence[int]) -> None:
        if len(ids) == 0:
            raise ConfigError("the prompt is empty (no tokens)")
        if len(ids) >= self.max_context:
            raise ConfigError(
                f"the prompt has {len(ids)} tokens; the model's context is {self.max_context} "
                f"tokens, leaving no room to generate: shorten the prompt"
            )
        arr = np.asarray(ids)
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0 or arr.max() >= self.vocab_size:
            raise ConfigError(f"prompt token ids must be integers in [0, {self.vocab_size})")

    # ------------------------------------------------------------------ generation
    def generate(
        self,
        prompts: list[list[int]],
        drafter: Drafter,
        budget: int,
        config: GenerationConfig | None = None,
        budget_policy=None,
    ) -> list[GenerationResult]:
        """Decode a batch of prompts (token ids) with speculative decoding.

        ``budget`` caps the tree size (root included) per request and step. Every request's
        drafter state is freed when it finishes, and for all of them if anything raises.
        ``budget_policy`` (a :class:`specplug.drafters.budget.BudgetPolicy`): load-aware
        budgets, each tree cut to the size that maximises the step's expected goodput; the
        CLI's default is ``BudgetPolicy(engine_cost_model(engine).model)``
        (:mod:`specplug.adapters.hf.cost`: this machine's cost, measured once and cached).
        None (the default here): every tree is verified at ``budget``.
        """
        t_start = time.perf_counter()
        config = GenerationConfig() if config is None else config
        budget = check_budget(budget)
        config.validate(self.vocab_size)
        if not prompts:
            raise ConfigError("generate() needs at least one prompt")
        for p in prompts:
            self._check_prompt(list(p))
        if drafter.vocab_size > self.vocab_size:
            raise ConfigError(
                f"the drafter was built for a vocabulary of {drafter.vocab_size} tokens, "
                f"the model has {self.vocab_size}: create it with the engine's vocab_size"
            )
        if self.tokenizer is not None:  # model drafters: the same tokenizer as ours
            drafter.check_target(self.tokenizer)
        with torch.inference_mode():
            batch = DecodeBatch(self, prompts, drafter, budget, config, t_start, budget_policy)
            try:
                batch.prefill()
                while not batch.done:
                    batch.step()
            finally:
                batch.close()
        return list(batch.results)

    def __repr__(self) -> str:
        return f"HFEngine({self.model_name}, vocab={self.vocab_size}, device={self.device}, dtype={self.dtype})"


def load_engine(model_path: str | None = None, device: str = "cpu", dtype: str | torch.dtype = "fp32") -> HFEngine:
    """Alias of :meth:`HFEngine.load`."""
    return HFEngine.load(model_path, device=device, dtype=dtype)
