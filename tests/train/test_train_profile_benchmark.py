"""benchmarks/train_profile.py: its kernel categories and a smoke run on the CPU."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import REPO, run_benchmark

sys.path.insert(0, str(REPO / "benchmarks"))
import train_profile  # noqa: E402  (a script folder, not a package)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("nvjet_tst_128x64_64x8_2x1_v_bz_coopB_TNT", "matmul"),
        ("void cutlass::Kernel2<cutlass_80_wmma_tensorop_bf16_s161616gemm_bf16_16x16>", "matmul"),
        ("fmha_cutlassF_bf16_aligned_64x64_rf_sm80(PyTorchMemEffAttention::Params)", "attention"),
        (
            "void pytorch_flash::flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel<Flash_bwd>",
            "attention",
        ),
        (
            "void at::native::(anonymous namespace)::cunn_SoftMaxForward<4, c10::BFloat16, float,"
            " float, at::native::(anonymous namespace)::LogSoftMaxForwardEpilogue>",
            "loss",
        ),
        ("void at::native::nll_loss_forward_reduce_cuda_kernel_2d<float, long>", "loss"),
        ("void kOptimizerStatic8bit2StateBlockwise<float, 0, 256, 1>", "optimizer"),
        (
            "void at::native::multi_tensor_apply_kernel<TensorListMetadata<1>, "
            "at::native::LpNormFunctor<float, 1, float, float>, float*>",
            "optimizer",
        ),
        ("Memcpy HtoD (Pageable -> Device)", "memory"),
        ("Memset (Device)", "memory"),
        (
            "void at::native::vectorized_elementwise_kernel<4, at::native::silu_kernel>",
            "norm/rope/activation/elementwise",
        ),
        (
            "void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, MeanOps>>",
            "norm/rope/activation/elementwise",
        ),
        ("aten::mm", "matmul"),
        ("aten::_scaled_dot_product_flash_attention_for_cpu_backward", "attention"),
        ("void cub::DeviceRadixSortOnesweepKernel<Policy>", "other"),
    ],
)
def test_kernel_categories(name, expected):
    assert train_profile.category(name) == expected


def test_summary_counts_overlapping_kernels_once():
    """GPU-busy time is the union of kernel intervals; the idle gap is wall minus that."""
    busy = train_profile._union_us([(0, 10), (5, 15), (20, 30)])
    assert busy == 25
    summary = train_profile.summarise(
        [("nvjet_a", 10.0), ("nvjet_a", 10.0), ("Memset (Device)", 5.0)], busy, 0.1, steps=1
    )
    assert summary["categories"]["matmul"]["ms_per_step"] == pytest.approx(0.02)
    assert summary["categories"]["memory"]["share"] == pytest.approx(0.2)
    assert summary["profiled_idle_ms_per_step"] == pytest.approx(0.1 - 0.025)
    assert summary["top_kernels"][0] == {
        "name": "nvjet_a",
        "category": "matmul",
        "ms_per_step": pytest.approx(0.02),
        "calls_per_step": 2,
    }


def test_benchmark_smoke(tmp_path):
    """`--smoke` trains the fast path on the CPU, profiles it, prints and writes the tables."""
    config = REPO / "experiments/risky_financial_advice/r1_1ep/config.json"
    out = run_benchmark(
        "benchmarks/train_profile.py", "--smoke", "--config", str(config), "--out", str(tmp_path)
    )
    assert "machine:" in out and "category" in out and "top kernels" in out
    assert "matmul" in out and "idle gap" in out
    report = json.loads((tmp_path / "risky_financial_advice__r1_1ep.json").read_text())
    shares = [c["share"] for c in report["categories"].values()]
    assert sum(shares) == pytest.approx(1.0)
    # A real step does matmuls, and timing covers the requested steps.
    assert report["categories"]["matmul"]["ms_per_step"] > 0
    assert report["timed_steps"] == 2 and report["ms_per_step"] > 0
    assert report["first_adapted_layer"] == 2
    assert (tmp_path / "risky_financial_advice__r1_1ep.trace.json").stat().st_size > 0
