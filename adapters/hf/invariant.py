"""Batch-invariant kernels for the embedded engine: a row's logits do not depend on the rows
beside it, so verifying a tree gives, bit for bit, what autoregressive decoding gives.

Greedy speculation is lossless only if the verify pass scores every node exactly as a
one-token pass would. In fp32 library kernels come close enough; in bf16 every op rounds
to 8 bits of mantissa, and the different blocking of a 1-row and an n-row product (or of
attention over a different number of keys) flips argmaxes. This module swaps in:

- :class:`PackedLinear`: oneDNN's prepacked linear (``torch.ops.mkldnn``). One weight
  layout and kernel for every row count, which keeps each output row's reduction order
  fixed (checked for every row count and layer shape by ``tests/test_invariant.py``),
  and it streams bf16 weights far faster at small row counts than ``F.linear``;
- ``specplug_tree`` attention (:mod:`.attention_kernel`) over :class:`InvariantKVCache`,
  a float32 cache that also keeps the keys transposed for the kernel.

Norms, rotary embeddings and activations are transformers' own: elementwise or per-row.
"""

from __future__ import annotations

import threading

import numpy as np
import torch
from torch import nn

from .attention_kernel import tree_attention
from .kv import TreeKVCache, tree_attention_mask

__all__ = [
    "ATTENTION_NAME",
    "InvariantKVCache",
    "PackedLinear",
    "invariant_supported",
    "make_invariant",
    "is_invariant",
]

ATTENTION_NAME = "specplug_tree"
_ACTIVE = threading.local()  # the cache whose update() ran last: the attention's K/V source


def _mkldnn_linear_ok() -> bool:
    ops = getattr(torch.ops, "mkldnn", None)
    return ops is not None and hasattr(ops, "_reorder_linear_weight") and torch.backends.mkldnn.is_available()


class PackedLinear(nn.Module):
    """``nn.Linear`` with its weight prepacked for oneDNN (CPU).

    oneDNN runs a product of one row (or two, three) through other kernels than larger
    ones, and the 1-row result differs in the last bits for some shapes (the MLP's down
    projection, K = 1536: measured). From four rows up every row count gives the same
    bits, and four rows are also the fastest small product on the machine measured
    (SmolLM2-135M's 30 layers: 1 row 22.9 ms, 2 rows 25.7, 4 rows 20.8), so fewer rows
    are padded to four."""

    MIN_ROWS = 4

    def __init__(self, linear: nn.Linear):
        super().__init__()
        w = linear.weight.detach()
        self.in_features, self.out_features = int(w.shape[1]), int(w.shape[0])
        self.packed = torch.ops.mkldnn._reorder_linear_weight(w.contiguous(), 16)
        self.bias = None if linear.bias is None else linear.bias.detach().contiguous()
        self.weight_shape = tuple(w.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        flat = x.reshape(-1, self.in_features)
        rows = flat.shape[0]
        if rows < self.MIN_ROWS:
            flat = torch.cat([flat, flat.new_zeros((self.MIN_ROWS - rows, self.in_features))])
        y = torch.ops.mkldnn._linear_pointwise(flat, self.packed, self.bias, "none", [], "")
        return y[:rows].reshape(*lead, self.out_features)


class _TiedHead(PackedLinear):
    """The LM head, packed; ``weight`` stays the (tied) original for code that reads it."""

    def __init__(self, linear: nn.Linear):
        super().__init__(linear)
        self.weight = linear.weight


class _FusedProjection(nn.Module):
    """One slice of a fused product (q/k/v, or gate/up): the first part asked for a given
    input computes the whole fused product once; the others slice the same result. Any call
    order works (a part finds no result for its input and computes it)."""

    def __init__(self, fused: PackedLinear, shared: dict, start: int, stop: int):
        super().__init__()
        self.fused, self.shared, self.start, self.stop = fused, shared, start, stop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shared = self.shared
        # the input itself is kept, not its id (which a new tensor may reuse); transformers
        # passes the same normed hidden states, unmodified, to q, k and v
        if shared.get("x") is not x:
            shared["x"], shared["out"] = x, self.fused(x)
        return shared["out"][..., self.start : self.stop]


class _FusedMLP(nn.Module):
    """``down(act(gate(x)) * up(x))`` with gate and up as one packed product."""

    def __init__(self, mlp: nn.Module):
        super().__init__()
        self.gate_up = _packed_cat([mlp.gate_proj, mlp.up_proj])
        self.split = int(mlp.gate_proj.weight.shape[0])
        self.down_proj = PackedLinear(mlp.down_proj)
        self.act_fn = mlp.act_fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gu = self.gate_up(x)
        return self.down_proj(self.act_fn(gu[..., : self.split]) * gu[..., self.split :])


def _packed_cat(linears: list[nn.Linear]) -> PackedLinear:
    bias = None
    if any(lin.bias is not None for lin in linears):
        bias = torch.cat(
            [lin.bias if lin.bias is not None else lin.weight.new_zeros(lin.out_features) for lin in linears]
        )
    w = torch.cat([lin.weight.detach() for lin in linears])
    merged = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None, dtype=w.dtype)
    with torch.no_grad():
        merged.weight.copy_(w)
        if bias is not None:
            merged.bias.copy_(bias)
    return PackedLinear(merged)


def _fuse_qkv(attn: nn.Module) -> None:
    parts = [attn.q_proj, attn.k_proj, attn.v_proj]
    fused, shared, start = _packed_cat(parts), {}, 0
    for name, lin in zip(("q_proj", "k_proj", "v_proj"), parts):
        stop = start + int(lin.weight.shape[0])
        setattr(attn, name, _FusedProjection(fused, shared, start, stop))
        start = stop


class InvariantKVCache(TreeKVCache):
    """:class:`TreeKVCache` in float32 (bf16 K/V convert exactly), plus the keys transposed
    (``[layers, B, kv_heads, head_dim, capacity]``) for :func:`tree_attention`. The visible
    keys of each query come from :meth:`set_visibility` before every forward pass."""

    def __init__(self, num_layers, batch, kv_heads, head_dim, capacity, dtype=None, device="cpu"):
        # float32 whatever the model's dtype: bf16 K/V convert exactly, and the kernel reads float32
        super().__init__(num_layers, batch, kv_heads, head_dim, capacity, torch.float32, device)
        self.keys_t = torch.zeros((num_layers, batch, kv_heads, head_dim, capacity), dtype=torch.float32)
        self.prefix = self.extra_ptr = self.extra_slot = None

    def write(self, layer, key_states, value_states):
        start = self.end
        out = super().write(layer, key_states, value_states)
        self.keys_t[layer, :, :, :, start : start + key_states.shape[-2]] = key_states.transpose(-1, -2)
        _ACTIVE.cache = self
        return out

    def set_visibility(self, prefix: np.ndarray, extra_ptr: np.ndarray, extra_slot: np.ndarray) -> None:
        """Query ``(b, w)`` of the next pass sees slots ``[0, prefix[b, w])`` then
        ``extra_slot[extra_ptr[b*W+w]:extra_ptr[b*W+w+1]]`` (ascending)."""
        self.prefix = np.ascontiguousarray(prefix, np.int64)
        self.extra_ptr = np.ascontiguousarray(extra_ptr, np.int64)
        self.extra_slot = np.ascontiguousarray(extra_slot, np.int64)

    def ensure_capacity(self, needed: int) -> None:
        if needed <= self.capacity:
            return
        old_t = self.keys_t
        super().ensure_capacity(needed)
        shape = list(old_t.shape)
        shape[4] = self.capacity
        self.keys_t = torch.zeros(shape, dtype=old_t.dtype)
        self.keys_t[..., : self.end] = old_t[..., : self.end]

    def select_rows(self, rows) -> None:
        super().select_rows(rows)
        idx = torch.as_tensor(np.asarray(rows), dtype=torch.long)
        self.keys_t = self.keys_t.index_select(1, idx)

    def move_slots(self, rows, src, dst) -> None:
        super().move_slots(rows, src, dst)
        self.keys_t[:, rows, :, :, dst] = self.keys_t[:, rows, :, :, src]


def _specplug_tree_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    cache = getattr(_ACTIVE, "cache", None)
    if not isinstance(cache, InvariantKVCache) or cache.prefix is None:
        raise RuntimeError(
            f"{ATTENTION_NAME} attention runs only inside the embedded engine's passes "
            "(an InvariantKVCache with the pass's visibility set)"
        )
    layer = int(module.layer_idx)
    b, h, w, d = query.shape
    if cache.prefix.shape != (b, w):
        raise RuntimeError(f"visibility is for {cache.prefix.shape} queries, the pass has {(b, w)}")
    q = query.float().contiguous().numpy()
    out = np.empty((b, w, h, d), np.float32)
    scale = float(scaling if scaling is not None else d**-0.5)
    tree_attention(
        q,
        cache.keys_t[layer].numpy(),
        cache.storage[layer, 1].numpy(),
        cache.prefix,
        cache.extra_ptr,
        cache.extra_slot,
        np.float32(scale),
        out,
    )
    return torch.from_numpy(out).to(query.dtype), None


def _no_mask(*args, **kwargs):
    return None


def _register() -> bool:
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface
    except ImportError:
        return False
    AttentionInterface.register(ATTENTION_NAME, _specplug_tree_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, _no_mask)
    return True


def invariant_supported(model) -> str | None:
    """None when :func:`make_invariant` applies to this model; else why not."""
    p = next(model.parameters())
    if p.device.type != "cpu":
        return "the batch-invariant kernels are CPU kernels"
    if not _mkldnn_linear_ok():
        return "this torch has no oneDNN prepacked linear"
    cfg = model.config
    if getattr(cfg, "model_type", None) not in ("llama",):
        return f"model type {getattr(cfg, 'model_type', None)!r} (the invariant path covers llama)"
    if getattr(cfg, "sliding_window", None):
        return "sliding-window attention"
    try:
        from transformers import AttentionInterface  # noqa: F401
        from transformers.masking_utils import AttentionMaskInterface  # noqa: F401
    except ImportError:
        return "this transformers has no AttentionInterface"
    return None


def is_invariant(model) -> bool:
    return getattr(model.config, "_attn_implementation", None) == ATTENTION_NAME


def make_invariant(model) -> None:
    """Swap every ``nn.Linear`` of a llama model for :class:`PackedLinear` and its attention
    for ``specplug_tree``, in place. Raises ``ValueError`` where :func:`invariant_supported`
    says no."""
    why = invariant_supported(model)
    if why is not None:
        raise ValueError(f"batch-invariant kernels not available: {why}")
    if is_invariant(model):
        return
    _register()
    for layer in model.model.layers:
        # fewer, larger products: q/k/v in one, gate/up in one (less dispatch per layer)
        if all(isinstance(getattr(layer.self_attn, n, None), nn.Linear) for n in ("q_proj", "k_proj", "v_proj")):
            _fuse_qkv(layer.self_attn)
        mlp = layer.mlp
        if all(isinstance(getattr(mlp, n, None), nn.Linear) for n in ("gate_proj", "up_proj", "down_proj")):
            layer.mlp = _FusedMLP(mlp)
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                full = f"{name}.{child_name}" if name else child_name
                packed = _TiedHead(child) if full == "lm_head" else PackedLinear(child)
                setattr(module, child_name, packed)
    model.config._attn_implementation = ATTENTION_NAME
    text_config = getattr(model.config, "text_config", None)
    if text_config is not None:
        text_config._attn_implementation = ATTENTION_NAME


# ---------------------------------------------------------------------- pass set-up


def new_cache(model, batch: int, capacity: int) -> TreeKVCache:
    """The KV cache a pass of this model needs: invariant or the library one."""
    return (InvariantKVCache if is_invariant(model) else TreeKVCache).for_model(model, batch, capacity)


def tree_pass_mask(cache: TreeKVCache, lens: np.ndarray, tree_mask: np.ndarray, dtype, device):
    """Attention input of a pass writing W tree tokens per row at ``cache.end``: row b's
    committed slots ``[0, lens[b])`` and its ancestors in ``tree_mask`` ``[B, W, W]``. An
    invariant cache takes it as visibility (returns None: no mask tensor is needed)."""
    if isinstance(cache, InvariantKVCache):
        b, w, _ = tree_mask.shape
        flat = np.asarray(tree_mask, bool).reshape(b * w, w)
        ptr = np.zeros(b * w + 1, np.int64)
        np.cumsum(flat.sum(axis=1), out=ptr[1:])
        cache.set_visibility(
            np.repeat(np.asarray(lens, np.int64)[:, None], w, axis=1), ptr, cache.end + np.nonzero(flat)[1]
        )
        return None
    return tree_attention_mask(
        torch.from_numpy(np.asarray(lens)).to(device),
        cache.end,
        torch.from_numpy(np.ascontiguousarray(tree_mask)).to(device),
        dtype,
    )


def prefill_visibility(cache: TreeKVCache, start: int, stop: int, lengths: np.ndarray) -> bool:
    """Causal visibility of prefill queries ``[start, stop)`` of right-padded prompts
    (padding queries see their row's prompt); False for a library cache."""
    if not isinstance(cache, InvariantKVCache):
        return False
    q = np.arange(start, stop, dtype=np.int64)
    prefix = np.minimum(q[None, :] + 1, np.asarray(lengths, np.int64)[:, None])
    cache.set_visibility(prefix, np.zeros(prefix.size + 1, np.int64), np.zeros(0, np.int64))
    return True


def draft_visibility(cache: TreeKVCache, lens: np.ndarray, first: int, last: int) -> bool:
    """One query per row seeing ``[0, lens[b])`` and the draft slots ``first..last``."""
    if not isinstance(cache, InvariantKVCache):
        return False
    n = np.asarray(lens).shape[0]
    slots = np.arange(first, last + 1, dtype=np.int64)
    cache.set_visibility(
        np.asarray(lens, np.int64)[:, None], np.arange(n + 1, dtype=np.int64) * slots.shape[0], np.tile(slots, n)
    )
    return True


def weight_count(module: nn.Module) -> int:
    """Weights a forward pass of ``module`` reads: its parameters plus the packed weights of
    its :class:`PackedLinear` layers (which are not parameters; a fused q/k/v product is one
    module shared by its three slices, so ``modules()`` yields it once)."""
    n = sum(p.numel() for p in module.parameters())
    for sub in module.modules():
        if isinstance(sub, PackedLinear) and not isinstance(sub, _TiedHead):
            n += sub.weight_shape[0] * sub.weight_shape[1]
    return int(n)
