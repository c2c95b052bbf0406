"""``sgl_kernel.speculative`` of the CPU test stand-in."""

import torch


def reconstruct_indices_from_tree_mask(
    tree_mask,
    verified_seq_len,
    positions,
    retrieve_index,
    retrieve_next_token,
    retrieve_next_sibling,
    batch_size,
    draft_token_num,
):
    torch.ops.sgl_kernel.reconstruct_indices_from_tree_mask(
        tree_mask,
        verified_seq_len,
        positions,
        retrieve_index,
        retrieve_next_token,
        retrieve_next_sibling,
        int(batch_size),
        int(draft_token_num),
    )
