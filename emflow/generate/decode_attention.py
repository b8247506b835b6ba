"""Decode attention over emflow's left-padded static KV cache: a Triton kernel for one new token
per row with grouped-query heads (the fast backend's `triton` attention, its default on a GPU).

Why a kernel of our own: torch's SDPA sends a one-token query with a mask to its memory-efficient
kernel, whose 64-row query tiles hold only the 4 query heads that share a key/value head; on an
H200 it read the cache at about a third of the memory bandwidth and took 60% of a 1000-row decode
step (benchmarks/README.md). FlashAttention's `flash_attn_with_kvcache` and FlashInfer would do,
but neither installs from the package registries without compiling CUDA code (flash-attn ships
only a source package on PyPI), while Triton comes with every CUDA build of torch.

What the kernel computes is SDPA's arithmetic for this case: for row b, key/value head h and its
G query heads, scores q . k * scale in float32 over the slots [start_b, slot] (the row's prompt
from its first real token, and every token generated so far; the left padding before start_b and
the empty slots after `slot` are never read), softmax in float32 (online, FlashAttention's
running maximum and sum), and the probabilities rounded to the cache dtype for the product with
the values, accumulated in float32, as flash and memory-efficient attention do. Where there are
too few (row, head) pairs to fill the GPU, the keys are split among several programs
(flash-decoding) and their partial results combined in float32.

Only the slots a row uses are read, so a step costs about the cache's real size in memory
traffic, not its 128-slot bucket's.
"""

from __future__ import annotations

import functools
from typing import Any

BLOCK_N = 64  # keys per inner iteration
NUM_WARPS = 4
NUM_STAGES = 2
# Below this many (row, kv head) programs per streaming multiprocessor, split the keys: one
# program per pair would leave SMs idle (a 20-row batch has 160 pairs for 132 SMs).
PROGRAMS_PER_SM = 4
MIN_KEYS_PER_SPLIT = 128


def supports_triton(device, head_dim: int) -> bool:
    """Whether the kernel runs here: a CUDA device, Triton importable, a power-of-two head size
    of at least 16 (tl.arange and tl.dot need one)."""
    if getattr(device, "type", device) != "cuda":
        return False
    if head_dim < 16 or head_dim & (head_dim - 1):
        return False
    try:
        import triton  # noqa: F401  (ships with CUDA builds of torch)
    except ImportError:
        return False
    return True


@functools.cache
def _kernel() -> Any:
    """The Triton kernel, compiled on first use (importing triton needs a CUDA build of torch)."""
    import triton
    import triton.language as tl

    @triton.jit
    def decode_attention_kernel(
        q_ptr,
        k_ptr,
        v_ptr,
        start_ptr,
        slot_ptr,
        out_ptr,
        m_ptr,
        l_ptr,
        stride_qb,
        stride_qh,
        stride_qg,
        stride_kb,
        stride_kh,
        stride_ks,
        stride_vb,
        stride_vh,
        stride_vs,
        stride_ob,
        stride_oh,
        stride_op,
        stride_og,
        kv_heads,
        keys_per_split,
        scale,
        G: tl.constexpr,
        G_PAD: tl.constexpr,
        D: tl.constexpr,
        BLOCK: tl.constexpr,
        NORMALIZE: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        pair = tl.program_id(0)
        split = tl.program_id(1)
        b = pair // kv_heads
        h = pair % kv_heads
        start = tl.load(start_ptr + b)
        last = tl.load(slot_ptr)  # the slot written this step: attended to, inclusive
        lo = tl.maximum(start, split * keys_per_split)
        hi = tl.minimum(last + 1, (split + 1) * keys_per_split)

        offs_g = tl.arange(0, G_PAD)
        offs_d = tl.arange(0, D)
        offs_n = tl.arange(0, BLOCK)
        q = tl.load(
            q_ptr + b * stride_qb + h * stride_qh + offs_g[:, None] * stride_qg + offs_d[None, :],
            mask=offs_g[:, None] < G,
            other=0.0,
        )
        k_base = k_ptr + b * stride_kb + h * stride_kh
        v_base = v_ptr + b * stride_vb + h * stride_vh
        m_i = tl.full([G_PAD], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([G_PAD], dtype=tl.float32)
        acc = tl.zeros([G_PAD, D], dtype=tl.float32)
        for n0 in range(lo, hi, BLOCK):
            keys = n0 + offs_n
            valid = keys < hi
            k = tl.load(
                k_base + keys[:, None] * stride_ks + offs_d[None, :],
                mask=valid[:, None],
                other=0.0,
            )
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
            s = tl.where(valid[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp(m_i - m_new)
            p = tl.exp(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(
                v_base + keys[:, None] * stride_vs + offs_d[None, :],
                mask=valid[:, None],
                other=0.0,
            )
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            m_i = m_new

        out = out_ptr + b * stride_ob + h * stride_oh + split * stride_op
        out = out + offs_g[:, None] * stride_og + offs_d[None, :]
        rows = offs_g[:, None] < G
        if NORMALIZE:
            tl.store(out, (acc / l_i[:, None]).to(out_ptr.dtype.element_ty), mask=rows)
        else:
            tl.store(out, acc, mask=rows)
            stats = pair * tl.num_programs(1) * G + split * G + offs_g
            tl.store(m_ptr + stats, m_i, mask=offs_g < G)
            tl.store(l_ptr + stats, l_i, mask=offs_g < G)

    return decode_attention_kernel


def splits_for(pairs: int, kv_len: int, sm_count: int) -> int:
    """How many programs share one (row, kv head)'s keys: 1 once the pairs alone fill the GPU."""
    wanted = -(-PROGRAMS_PER_SM * sm_count // pairs)
    return max(1, min(wanted, kv_len // MIN_KEYS_PER_SPLIT))


@functools.cache
def _sm_count(device_index: int) -> int:
    import torch

    return torch.cuda.get_device_properties(device_index).multi_processor_count


def decode_attention(q, keys, values, start, slot, scale: float):
    """Attention of one new token per row over the cache, with grouped query heads.

    q: [B, kv_heads, G, D] (any strides with D contiguous); keys, values: [B, kv_heads, L, D]
    cache slices (slot stride D); start: [B] int64, each row's first real slot; slot: [1] int64,
    the slot written this step (every row attends to [start_b, slot]). Returns [B, kv_heads, G,
    D] in q's dtype. L only bounds the split sizes: no slot after `slot` is read.
    """
    import torch

    rows, kv_heads, groups, dim = q.shape
    length = keys.shape[2]
    if q.stride(-1) != 1 or keys.stride(-1) != 1 or values.stride(-1) != 1:
        raise ValueError("decode_attention needs the head dimension contiguous")
    kernel = _kernel()
    pairs = rows * kv_heads
    splits = splits_for(pairs, length, _sm_count(q.device.index or 0))
    keys_per_split = -(-length // splits)
    normalize = splits == 1
    if normalize:
        out = torch.empty(rows, kv_heads, 1, groups, dim, dtype=q.dtype, device=q.device)
        m = l_ = out  # unused: the kernel writes normalized outputs directly
    else:
        out = torch.empty(rows, kv_heads, splits, groups, dim, device=q.device)
        m = torch.empty(rows, kv_heads, splits, groups, device=q.device)
        l_ = torch.empty_like(m)
    kernel[(pairs, splits)](
        q,
        keys,
        values,
        start,
        slot,
        out,
        m,
        l_,
        q.stride(0),
        q.stride(1),
        q.stride(2),
        keys.stride(0),
        keys.stride(1),
        keys.stride(2),
        values.stride(0),
        values.stride(1),
        values.stride(2),
        out.stride(0),
        out.stride(1),
        out.stride(2),
        out.stride(3),
        kv_heads,
        keys_per_split,
        scale,
        G=groups,
        G_PAD=max(16, 1 << (groups - 1).bit_length()),  # tl.dot needs at least 16 rows
        D=dim,
        BLOCK=BLOCK_N,
        NORMALIZE=normalize,
        # float32 caches stay float32 (not TF32), as SDPA computes them.
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=NUM_WARPS,
        num_stages=NUM_STAGES,
    )
    if normalize:
        return out[:, :, 0]
    # Combine the splits in float32: each partial sum rescaled to the common maximum. A split
    # with no keys of the row's (all left padding) has m = -inf and weight 0.
    weight = torch.exp(m - m.amax(dim=2, keepdim=True))
    total = (out * weight[..., None]).sum(2) / (l_ * weight).sum(2)[..., None]
    return total.to(q.dtype)
