"""A pure-torch stand-in for SGLang's ``sgl_kernel`` (CUDA/AMX kernels), for CPU tests only.

It registers the ops SGLang 0.5.23's CPU engine calls for a Llama-style model with
NGRAM-style tree verification (``torch.ops.sgl_kernel.*``, see ``ops.py``) and exposes
the same names as module functions. Names that SGLang only imports (never calls on
this path) are stubs that raise, naming themselves. ``convert_weight_packed`` is
deliberately absent, so SGLang's ``cpu_has_amx_support()`` stays false and linear /
norm layers keep their native torch paths.
"""

from __future__ import annotations

import torch

from . import ops as _ops  # noqa: F401 -- registers torch.ops.sgl_kernel.*

__version__ = "0.0.0+specplug.cpu.stand.in"
IS_STAND_IN = True


def _op(name):
    return getattr(torch.ops.sgl_kernel, name)


def assign_req_to_token_pool_cpu(req_pool_indices, req_to_token, start_offset, end_offset, out_cache_loc, pool_len):
    _op("assign_req_to_token_pool_cpu")(
        req_pool_indices, req_to_token, start_offset, end_offset, out_cache_loc, int(pool_len)
    )


def assign_extend_cache_locs_cpu(req_pool_indices, req_to_token, start_offset, end_offset, out_cache_loc, pool_len):
    _op("assign_extend_cache_locs_cpu")(
        req_pool_indices, req_to_token, start_offset, end_offset, out_cache_loc, int(pool_len)
    )


def copy_all_layer_kv_cache_cpu(data_ptrs, strides, tgt_loc, src_loc):
    _op("copy_all_layer_kv_cache_cpu")(data_ptrs, strides, tgt_loc, src_loc)


def verify_tree_greedy_cpu(
    predicts,
    accept_index,
    accept_token_num,
    candidates,
    retrive_index,
    retrive_next_token,
    retrive_next_sibling,
    target_predict,
):
    _op("verify_tree_greedy_cpu")(
        predicts,
        accept_index,
        accept_token_num,
        candidates,
        retrive_index,
        retrive_next_token,
        retrive_next_sibling,
        target_predict,
    )


def fill_accept_out_cache_loc_cpu(accept_index, out_cache_loc, accept_out_cache_loc):
    _op("fill_accept_out_cache_loc_cpu")(accept_index, out_cache_loc, accept_out_cache_loc)


def fill_bonus_tokens_cpu(accept_tokens, accept_lens, bonus_tokens, accept_stride):
    _op("fill_bonus_tokens_cpu")(accept_tokens, accept_lens, bonus_tokens, int(accept_stride))


def _unimplemented(name):
    def stub(*args, **kwargs):
        raise NotImplementedError(
            f"sgl_kernel.{name} is not implemented by specplug's CPU test stand-in "
            f"(integration_tests/sglang/cpu_kernels); only the NGRAM-path ops are"
        )

    stub.__name__ = name
    return stub


# imported by SGLang modules on the CPU path, never called by the tested configuration
IMPORT_ONLY = (
    "assign_draft_cache_locs_contiguous_cpu",
    "build_tree_kernel_efficient_cpu",
    "rotate_input_ids_cpu",
    "build_draft_decode_metadata_cpu",
    "store_cache_cpu",
)
for _name in IMPORT_ONLY:
    globals()[_name] = _unimplemented(_name)

from . import speculative  # noqa: E402,F401
