"""The embedded engine's early-exit runner (``specplug.drafters.early_exit.EarlyExitRunner``).

Drafting runs the target's own first E decoder layers, its final norm and LM head, with
the batch's :class:`~specplug.adapters.hf.kv.TreeKVCache`: draft offset k of every row is
written at the shared slot ``end + k`` (the slots the verification pass writes next, so the
verification overwrites the draft KV of layers < E with the full model's; drafts never
leak into the committed cache). The partial forward calls the model's own decoder
(``model.model``) with its layer list cut to the first E layers, so each family's own
embedding scaling, rotary embeddings and masks apply (Llama, Mistral, Qwen2/Qwen3,
Gemma/Gemma2/Gemma3 text models: ``model.model.layers``, ``model.model.norm`` and an LM
head). Gemma2-style final logit soft-capping is applied to the early-exit logits.

Shadow tokens: when the drafter asks for them, the verification pass returns all hidden
states (``output_hidden_states``, no extra compute); the runner keeps the requested layers'
states at the committed path positions and applies the final norm + LM head on demand,
vectorised over layers and positions. The prompt seed does the same over the last n
prompt positions during prefill.

The verification recomputes every layer for the root and the draft chain (the lossless
route); reusing the draft KV of layers < E in the verification (LayerSkip's KV reuse)
is not implemented.
"""

from __future__ import annotations

import numpy as np
import torch

from specplug.drafters.early_exit import ShadowTokens, shadow_layers
from specplug.drafters.errors import ConfigError

from .invariant import draft_visibility, weight_count
from .kv import cache_kwarg

__all__ = ["HFEarlyExitRunner", "check_early_exit_model"]


def check_early_exit_model(model) -> tuple:
    """(decoder, layers, final norm, LM head) of a decoder-only model, or a ConfigError."""
    name = type(model).__name__
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    norm = getattr(inner, "norm", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if (
        not isinstance(layers, torch.nn.ModuleList)
        or norm is None
        or head is None
        or not isinstance(getattr(head, "weight", None), torch.Tensor)
    ):
        raise ConfigError(
            f"early-exit drafting (del, early-exit) needs a decoder-only model with "
            f"model.model.layers, model.model.norm and an LM head (Llama, Mistral, Qwen2/3, "
            f"Gemma families); {name} has not that structure: use another algorithm"
        )
    cfg = model.config
    n = int(getattr(cfg, "num_hidden_layers", len(layers)))
    if n != len(layers) or len(layers) < 2:
        raise ConfigError(
            f"early-exit drafting needs >= 2 decoder layers with config.num_hidden_layers "
            f"matching model.model.layers; {name} has {len(layers)} layers, config says {n}"
        )
    return inner, layers, norm, head


class HFEarlyExitRunner:
    """One per :class:`~specplug.adapters.hf.decode.DecodeBatch` (reads its live state)."""

    def __init__(self, batch):
        self.batch = batch
        self.model = batch.model
        self.inner, self.layers, self.norm, self.head = check_early_exit_model(self.model)
        self._cache_kw = cache_kwarg(self.inner)
        self.num_layers = len(self.layers)
        self.softcap = getattr(self.model.config, "final_logit_softcapping", None)
        self._cut: dict[int, torch.nn.ModuleList] = {}
        self._want: dict = {}  # rid -> layers (np.int64) for the next verification
        self._kept: dict = {}  # rid -> (layers, hidden [K, P, H], final [P])
        self._prompt_want = None  # (layers, n)
        self._prompt_kept: dict = {}  # row index -> list of (positions, hidden [K, p, H], final hidden [p, H])

    # ------------------------------------------------------------------ cost
    def cost_profile(self) -> tuple[float, np.ndarray]:
        """Compute shares by parameter count (one-token forward: weights dominate)."""
        shares = np.array([weight_count(layer) for layer in self.layers], np.float64)
        head = float(self.head.weight.numel())
        total = head + shares.sum()
        return head / total, shares / total

    # ------------------------------------------------------------------ helpers
    def _rows(self, rids) -> np.ndarray:
        b = self.batch
        where = {b.rids[i]: j for j, i in enumerate(b.active)}
        try:
            return np.array([where[r] for r in rids], np.int64)
        except KeyError as e:
            raise ConfigError(f"early-exit runner: request {e.args[0]!r} is not in the running batch") from None

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.head(hidden).float()
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def _top(self, normed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self._logits(normed)
        top, ids = logits.max(dim=-1)
        return ids, torch.exp(top - torch.logsumexp(logits, dim=-1))

    def _truncated(self, e: int) -> torch.nn.ModuleList:
        cut = self._cut.get(e)
        if cut is None:
            cut = self._cut[e] = torch.nn.ModuleList(list(self.layers)[:e])
        return cut

    # ------------------------------------------------------------------ drafting
    def draft(self, rids, tokens, step, exit_layers):
        b = self.batch
        rows = self._rows(rids)
        exits = np.asarray(exit_layers, np.int64)
        if exits.shape[0] != rows.shape[0] or np.any((exits < 1) | (exits >= self.num_layers)):
            raise ConfigError(
                f"early-exit runner: exit layers must lie in 1..{self.num_layers - 1}, got {exits.tolist()}"
            )
        dev, cache = b.device, b.cache
        n = b.active.shape[0]
        ids = np.zeros((n, 1), np.int64)
        ids[rows, 0] = np.asarray(tokens, np.int64)
        end0 = cache.end
        slot = end0 + int(step)
        cache.ensure_capacity(slot + 1)
        lens = torch.from_numpy(b.lens).to(dev)
        k = torch.arange(slot + 1, device=dev)
        allowed = (k[None, :] < lens[:, None]) | (k[None, :] >= end0)  # prefix + own draft slots
        mask = None
        if not draft_visibility(cache, b.lens, end0, slot):
            mask = torch.zeros((n, 1, 1, slot + 1), dtype=b.dtype, device=dev)
            mask.masked_fill_(~allowed[:, None, None, :], torch.finfo(b.dtype).min)
        positions = (lens + int(step))[:, None]
        e_max = int(exits.max())
        mixed = bool(np.any(exits != e_max))
        full = self.inner.layers
        cache.end = slot
        try:
            self.inner.layers = self._truncated(e_max)
            out = self.inner(
                input_ids=torch.from_numpy(ids).to(dev),
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                output_hidden_states=mixed,
                **{self._cache_kw: cache},
            )
        finally:
            self.inner.layers = full
            cache.end = end0
        rows_t = torch.from_numpy(rows).to(dev)
        h = out.last_hidden_state[rows_t, -1]  # normed output of layer e_max
        if mixed:
            lower = np.flatnonzero(exits != e_max)
            raw = torch.stack([out.hidden_states[int(exits[j])][int(rows[j]), -1] for j in lower])
            h = h.clone()
            h[torch.from_numpy(lower).to(dev)] = self.norm(raw)
        ids_t, probs = self._top(h)
        return ids_t.cpu().numpy(), probs.cpu().numpy().astype(np.float32)

    # ------------------------------------------------------------------ shadow tokens at verification
    def request_shadow(self, rid, layers) -> None:
        self._want[rid] = shadow_layers(layers, self.num_layers)

    def wants_hidden(self) -> bool:
        return bool(self._want)

    def capture(self, hidden_states, logits: torch.Tensor, accepted_nodes: np.ndarray, accept_len: np.ndarray):
        """After a verification pass (before the cache compaction): keep what was asked for."""
        b = self.batch
        want, self._want = self._want, {}
        for j, i in enumerate(b.active):
            rid = b.rids[i]
            layers = want.get(rid)
            if layers is None:
                continue
            nodes = torch.from_numpy(np.asarray(accepted_nodes[j, : int(accept_len[j]) + 1], np.int64)).to(b.device)
            hid = torch.stack([hidden_states[int(l)][j, nodes] for l in layers])  # [K, P, H]
            final = logits[j, nodes].argmax(dim=-1)
            self._kept[rid] = (layers, hid, final)

    def shadow(self, rid) -> ShadowTokens | None:
        kept = self._kept.pop(rid, None)
        if kept is None:
            return None
        layers, hid, final = kept
        with torch.inference_mode():
            ids, probs = self._top(self.norm(hid))
        return ShadowTokens(layers, ids.cpu().numpy(), probs.cpu().numpy(), final.cpu().numpy())

    # ------------------------------------------------------------------ prompt seed at prefill
    def request_prompt_shadow(self, layers, n: int) -> None:
        layers = np.asarray(layers, np.int64)
        if layers.shape[0] and int(n) > 0:
            self._prompt_want = (layers, int(n))

    def prefill_wants(self, start: int, stop: int, lengths: np.ndarray) -> bool:
        """Does the chunk [start, stop) hold any of the last n prompt positions of a row?"""
        if self._prompt_want is None:
            return False
        n = self._prompt_want[1]
        lo = np.maximum(lengths - n, 0)
        return bool(np.any((lo < stop) & (lengths > start)))

    def capture_prefill(self, hidden_states, start: int, stop: int, lengths: np.ndarray) -> None:
        layers, n = self._prompt_want
        for row, length in enumerate(lengths.tolist()):
            a, z = max(start, length - n, 0), min(stop, length)
            if a >= z:
                continue
            sl = slice(a - start, z - start)
            hid = torch.stack([hidden_states[int(l)][row, sl] for l in layers])  # [K, p, H]
            self._prompt_kept.setdefault(row, []).append((hid, hidden_states[-1][row, sl]))

    def prompt_shadow(self, rid) -> ShadowTokens | None:
        """The prompt seed of ``rid`` (its row: prefill order), computed now, consumed once."""
        if self._prompt_want is None:
            return None
        b = self.batch
        row = b.rids.index(rid)
        parts = self._prompt_kept.pop(row, None)
        if not parts:
            return None
        layers = self._prompt_want[0]
        hid = torch.cat([p[0] for p in parts], dim=1)
        last = torch.cat([p[1] for p in parts], dim=0)  # final layer, already normed
        with torch.inference_mode():
            ids, probs = self._top(self.norm(hid))
            final = self._logits(last).argmax(dim=-1)
        return ShadowTokens(layers, ids.cpu().numpy(), probs.cpu().numpy(), final.cpu().numpy())

    def close(self) -> None:
        self._want.clear()
        self._kept.clear()
        self._prompt_kept.clear()
        self._cut.clear()
