"""TreeKVCache bookkeeping on synthetic tensors: compaction, masks, growth, row removal."""

from __future__ import annotations

import numpy as np
import torch

from specplug.adapters.hf.kv import TreeKVCache, tree_attention_mask


def _cache(batch=2, cap=16, layers=3):
    c = TreeKVCache(layers, batch, 2, 4, cap, torch.float64)
    c.storage.copy_(torch.randn(c.storage.shape, dtype=torch.float64))
    return c


def test_compact_moves_accepted_nodes_into_each_prefix():
    c = _cache()
    c.end = 8
    before = c.storage.clone()
    lens = np.array([3, 8])
    nodes = np.array([[0, 2, 5], [0, 1, -1]])
    accept = np.array([2, 1])
    c.compact(lens, nodes, accept)
    s = c.storage
    for d, node in enumerate([0, 2, 5]):
        assert torch.equal(s[:, :, 0, :, 3 + d], before[:, :, 0, :, 8 + node])
    for d, node in enumerate([0, 1]):
        assert torch.equal(s[:, :, 1, :, 8 + d], before[:, :, 1, :, 8 + node])
    # committed prefixes untouched
    assert torch.equal(s[:, :, 0, :, :3], before[:, :, 0, :, :3])
    assert torch.equal(s[:, :, 1, :, :8], before[:, :, 1, :, :8])


def test_compact_in_place_chain_is_a_no_op():
    c = _cache(batch=1)
    c.end = 5
    before = c.storage.clone()
    c.compact(np.array([5]), np.array([[0, 1, 2]]), np.array([2]))
    assert torch.equal(c.storage, before)


def test_layer_update_writes_at_end_and_returns_the_prefix():
    c = _cache(batch=1, cap=10, layers=1)
    c.end = 4
    k = torch.ones(1, 2, 3, 4, dtype=torch.float64)
    keys, values = c.update(k, 2 * k, 0)
    assert keys.shape == (1, 2, 7, 4) and torch.equal(keys[:, :, 4:], k) and torch.equal(values[:, :, 4:], 2 * k)
    assert c.get_seq_length() == 4


def test_tree_attention_mask():
    tree = torch.tensor([[[1, 0, 0], [1, 1, 0], [1, 0, 1]]], dtype=torch.bool).repeat(2, 1, 1)
    m = tree_attention_mask(torch.tensor([2, 4]), 4, tree, torch.float32)
    assert m.shape == (2, 1, 3, 7)
    allowed = m[:, 0] == 0
    assert allowed[0, :, :4].tolist() == [[True, True, False, False]] * 3
    assert allowed[1, :, :4].all()
    assert torch.equal(allowed[:, :, 4:], tree)
    assert (m[~(m == 0)] == torch.finfo(torch.float32).min).all()


def test_growth_and_row_selection_keep_contents():
    c = _cache(batch=3, cap=8)
    c.end = 6
    before = c.storage[..., :6, :].clone()
    c.ensure_capacity(20)
    assert c.capacity >= 20 and torch.equal(c.storage[..., :6, :], before)
    assert (c.storage[..., 6:, :] == 0).all()
    c.select_rows(np.array([0, 2]))
    assert c.batch == 2
    assert torch.equal(c.storage[:, :, 1, :, :6], before[:, :, 2])
