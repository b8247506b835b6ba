"""The fast backend's Triton decode attention: SDPA's result over each row's own slots.

The kernel itself needs CUDA (its tests skip without it and ran on the lent GPU machine, see
benchmarks/README.md); on a CPU the decoder must fall back to SDPA by itself.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaForCausalLM

from emflow.generate import decode_attention as da
from emflow.generate.fast_model import Decoder


def test_auto_is_sdpa_without_cuda(tiny_model):
    model = LlamaForCausalLM.from_pretrained(tiny_model)
    assert Decoder(model, "auto").attention == "sdpa"
    assert not da.supports_triton(torch.device("cpu"), 64)
    assert not da.supports_triton(torch.device("cuda"), 48)  # not a power of two


def test_splits_fill_the_gpu_only_when_rows_do_not():
    assert da.splits_for(pairs=8000, kv_len=768, sm_count=132) == 1
    splits = da.splits_for(pairs=160, kv_len=768, sm_count=132)  # 20 rows x 8 kv heads
    assert splits > 1
    assert splits * 160 >= da.PROGRAMS_PER_SM * 132 and 768 / splits >= da.MIN_KEYS_PER_SPLIT
    assert da.splits_for(pairs=160, kv_len=100, sm_count=132) == 1  # too few keys to split


def reference(q, keys, values, start, slot, scale):
    """SDPA in float32 with the mask the sdpa path builds."""
    slots = torch.arange(keys.shape[2], device=q.device)
    mask = (slots[None] >= start[:, None]) & (slots[None] <= slot)
    return F.scaled_dot_product_attention(
        q.float(), keys.float(), values.float(), attn_mask=mask[:, None, None], scale=scale
    )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [3, 600])  # split keys (few rows) and one program per pair
@pytest.mark.parametrize("slot", [40, 200, 383])
def test_kernel_equals_sdpa(dtype, rows, slot):
    gen = torch.Generator(device="cuda").manual_seed(rows + slot)
    kv_heads, groups, dim, slots = 8, 4, 64, 384

    def randn(*shape):
        return torch.randn(*shape, generator=gen, device="cuda").to(dtype)

    # q as the decoder slices it from the fused projection: not contiguous across heads.
    q = randn(rows, kv_heads * groups + 2 * kv_heads, dim)[:, : kv_heads * groups]
    q = q.reshape(rows, kv_heads, groups, dim)
    keys, values = randn(rows, kv_heads, slots, dim), randn(rows, kv_heads, slots, dim)
    start = torch.randint(0, 30, (rows,), generator=gen, device="cuda")
    slot_t = torch.tensor([slot], device="cuda")
    # What the kernel must never read: the padding before each start and the slots after `slot`.
    for b in range(rows):
        keys[b, :, : start[b]] = float("nan")
        values[b, :, : start[b]] = float("nan")
    keys[:, :, slot + 1 :] = float("nan")
    values[:, :, slot + 1 :] = float("nan")
    got = da.decode_attention(q, keys, values, start, slot_t, dim**-0.5)
    want = reference(
        q, keys.nan_to_num(), values.nan_to_num(), start, slot_t, dim**-0.5
    )  # masked NaNs would poison SDPA's matmul itself
    assert got.dtype == dtype and got.shape == q.shape
    tolerance = 2e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.float(), want, rtol=tolerance, atol=tolerance)
