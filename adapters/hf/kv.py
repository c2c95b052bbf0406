"""A preallocated KV cache for tree verification, with per-request valid prefixes.

One storage tensor holds every layer: ``[layers, 2 (k/v), B, kv_heads, capacity, head_dim]``.
Row b's committed KV occupies slots ``[0, lens[b])``; a forward pass writes its W new
tokens (a padded draft tree per row, or a prefill chunk) at the shared slots
``[end, end + W)`` where ``end = max(lens)``. Slots between ``lens[b]`` and ``end`` are
stale and masked out. After verification :meth:`TreeKVCache.compact` moves the accepted
nodes of every row to ``lens[b] + depth`` in one gather/scatter over all layers at once.

The model only sees the transformers ``Cache`` interface (``update(k, v, layer_idx)``), so
any decoder that routes attention through a ``Cache`` and accepts a 4D mask works.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers.cache_utils import Cache, CacheLayerMixin

__all__ = ["TreeKVCache", "tree_attention_mask", "cache_kwarg"]


def cache_kwarg(module: torch.nn.Module) -> str:
    """The keyword ``module.forward`` takes its KV cache by: ``cache`` (transformers >= 5.2x,
    which deprecates ``past_key_values`` for removal in 5.40) or ``past_key_values``."""
    import inspect

    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


class _SlotLayer(CacheLayerMixin):
    """One layer's view of the shared storage; writes land at the cache's ``end`` slot."""

    is_sliding = False
    is_compileable = False
    is_croppable = False

    def __init__(self, owner: TreeKVCache, index: int):
        super().__init__()
        self.owner, self.index = owner, index
        self.is_initialized = True

    def lazy_initialization(self, key_states, value_states):  # storage is allocated up front
        return None

    def update(self, key_states, value_states, *args, **kwargs):
        return self.owner.write(self.index, key_states, value_states)

    @property
    def keys(self):
        return self.owner.storage[self.index, 0, :, :, : self.owner.end]

    @keys.setter
    def keys(self, value):  # the base class assigns None in __init__
        pass

    @property
    def values(self):
        return self.owner.storage[self.index, 1, :, :, : self.owner.end]

    @values.setter
    def values(self, value):
        pass

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.owner.end + query_length, 0

    def get_seq_length(self) -> int:
        return self.owner.end

    def get_max_length(self) -> int:
        return -1


class TreeKVCache(Cache):
    """KV of a batch of requests with ragged committed lengths (see the module docstring)."""

    def __init__(
        self,
        num_layers: int,
        batch: int,
        kv_heads: int,
        head_dim: int,
        capacity: int,
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
    ):
        # zeros, not empty: stale slots are masked, but NaN garbage would still leak through
        # the attention-weighted sum (0 * NaN = NaN)
        self.storage = torch.zeros((num_layers, 2, batch, kv_heads, capacity, head_dim), dtype=dtype, device=device)
        self.end = 0
        super().__init__(layers=[_SlotLayer(self, i) for i in range(num_layers)])

    @classmethod
    def for_model(cls, model, batch: int, capacity: int) -> TreeKVCache:
        cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        p = next(model.parameters())
        return cls(cfg.num_hidden_layers, batch, kv_heads, head_dim, capacity, p.dtype, p.device)

    def write(self, layer: int, key_states: torch.Tensor, value_states: torch.Tensor):
        """Store a pass's new K/V of one layer at slots ``[end, end + W)``; returns the
        layer's keys and values up to ``end + W`` (what attention reads)."""
        start, stop = self.end, self.end + key_states.shape[-2]
        kv = self.storage[layer]
        kv[0, :, :, start:stop] = key_states
        kv[1, :, :, start:stop] = value_states
        return kv[0, :, :, :stop], kv[1, :, :, :stop]

    @property
    def capacity(self) -> int:
        return int(self.storage.shape[4])

    @property
    def batch(self) -> int:
        return int(self.storage.shape[2])

    def ensure_capacity(self, needed: int) -> None:
        """Grow (doubling) so that ``needed`` slots fit; copies only the used prefix."""
        if needed <= self.capacity:
            return
        new_cap = max(needed, 2 * self.capacity)
        shape = list(self.storage.shape)
        shape[4] = new_cap
        grown = torch.zeros(shape, dtype=self.storage.dtype, device=self.storage.device)
        grown[..., : self.end, :] = self.storage[..., : self.end, :]
        self.storage = grown

    def select_rows(self, rows: torch.Tensor | np.ndarray) -> None:
        """Keep only these batch rows (finished requests drop out)."""
        idx = torch.as_tensor(np.asarray(rows), dtype=torch.long, device=self.storage.device)
        self.storage = self.storage.index_select(2, idx)

    def compact(self, lens: np.ndarray, nodes: np.ndarray, accept_len: np.ndarray) -> None:
        """Move accepted tree nodes into each row's committed prefix.

        ``nodes[b, d]`` (root first, -1 padded) are tree node indices written at slot
        ``end + node`` by the last forward pass; node ``nodes[b, d]`` moves to slot
        ``lens[b] + d`` for ``d <= accept_len[b]``. ``end`` is left for the caller to set.
        """
        b, dm = nodes.shape
        d = np.arange(dm)[None, :]
        dst = lens[:, None] + d
        keep = d <= accept_len[:, None]
        # padding entries copy a slot onto itself: harmless, and keeps the index arrays dense
        src = np.where(keep, self.end + np.maximum(nodes, 0), dst)
        if np.array_equal(src, dst):  # e.g. one request, chain accepted in place
            return
        dev = self.storage.device
        rows = torch.arange(b, device=dev)[:, None].expand(b, dm)
        self.move_slots(
            rows, torch.as_tensor(src, dtype=torch.long, device=dev), torch.as_tensor(dst, dtype=torch.long, device=dev)
        )

    def move_slots(self, rows: torch.Tensor, src: torch.Tensor, dst: torch.Tensor) -> None:
        """Copy slot ``src[b, d]`` of row ``rows[b, d]`` to slot ``dst[b, d]``, every layer."""
        moved = self.storage[:, :, rows, :, src, :]  # [b, dm, layers, 2, heads, dim]
        self.storage[:, :, rows, :, dst, :] = moved

    def row_kv(self, layer: int, row: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Row ``row``'s committed keys and values of one layer: ``[heads, length, dim]`` each."""
        kv = self.storage[layer, :, row, :, :length]
        return kv[0], kv[1]


def tree_attention_mask(lens: torch.Tensor, end: int, tree_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive 4D mask ``[B, 1, W, end + W]``: each query sees its row's committed prefix
    (slots < lens[b]) and its tree ancestors (and itself) among the W new slots."""
    b, w, _ = tree_mask.shape
    device = tree_mask.device
    committed = torch.arange(end, device=device)[None, :] < lens[:, None]  # [B, end]
    allowed = torch.cat([committed[:, None, :].expand(b, w, end), tree_mask], dim=2)
    mask = torch.zeros((b, 1, w, end + w), dtype=dtype, device=device)
    mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)
    return mask
