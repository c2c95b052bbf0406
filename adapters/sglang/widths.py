"""Per-step widths for SGLang's NGRAM verify path (torch only, no SGLang imports).

SGLang preallocates its verify buffers at the launch width W and hands out per-batch-size
views (``positions_batch[bs]`` ...). A step at width w <= W uses views of the same storage
reshaped to w (:class:`RowsOf`); the batch's kept speculative input goes back to width W
after the step (:func:`relayout`)."""

from __future__ import annotations

__all__ = ["RowsOf", "VIEW_LISTS", "views_at", "relayout"]


class RowsOf:
    """``views[bs]`` of a preallocated buffer at another width: the first ``bs`` rows of
    the buffer's storage reshaped to ``per_request`` elements (or a [rows, width] matrix)."""

    def __init__(self, buffer, per_request: int, matrix_width: int = 0):
        self.flat = buffer.view(-1)
        self.per_request, self.matrix_width = per_request, matrix_width

    def __getitem__(self, bs: int):
        rows = self.flat[: bs * self.per_request]
        return rows.view(bs, self.matrix_width) if self.matrix_width else rows


#: NGRAMWorker's per-batch-size views (``_init_preallocated_tensors``, pinned in specplug.patches.sglang)
VIEW_LISTS = (
    "retrieve_indexes_batch",
    "retrieve_next_token_batch",
    "retrieve_next_sibling_batch",
    "positions_batch",
    "draft_tokens_batch",
    "tree_mask_batch",
)


def views_at(worker, width: int) -> dict:
    """Every one of :data:`VIEW_LISTS` for ``worker``'s buffers at ``width`` nodes per request."""
    return {
        "retrieve_indexes_batch": RowsOf(worker.retrieve_indexes, width, width),
        "retrieve_next_token_batch": RowsOf(worker.retrieve_next_token, width, width),
        "retrieve_next_sibling_batch": RowsOf(worker.retrieve_next_sibling, width, width),
        "positions_batch": RowsOf(worker.positions, width),
        "draft_tokens_batch": RowsOf(worker.draft_tokens, width),
        "tree_mask_batch": RowsOf(worker.tree_mask, width * width),
    }


def relayout(spec_input, bs: int, width: int, launch_width: int) -> None:
    """The batch keeps ``spec_input`` across steps; SGLang's filter/merge reshape its
    accepted tokens by its width, so store them at the launch width every batch shares.
    (The scheduler reads this step's tokens from the result, at the step's stride.)"""
    rows = spec_input.accept_tokens.reshape(bs, width)
    padded = rows.new_zeros((bs, launch_width))
    padded[:, :width] = rows
    spec_input.accept_tokens = padded.reshape(-1)
    spec_input.draft_token_num = spec_input.num_tokens_per_req = launch_width
    spec_input.num_tokens_for_logprob_per_req = launch_width
