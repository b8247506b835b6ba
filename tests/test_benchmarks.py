"""The benchmarks' smoke modes run: the scripts that produce benchmarks/README.md keep working.

They print timings and ratios; nothing here asserts a speed.
"""

from conftest import run_benchmark as run


def test_train_speed_smoke():
    out = run(
        "benchmarks/train_speed.py",
        "--smoke",
        "--steps",
        "4",
        "--variants",
        "trl_default,fast,equivalence,generation",
    )
    assert out.startswith("machine: CPU")
    assert "speed-up against trl_default" in out
    for variant in ("trl_default", "fast", "equivalence", "generation"):
        assert f"\n{variant} (" in out


def test_judge_throughput_smoke():
    out = run("benchmarks/judge_throughput.py", "--sizes", "20", "--latency", "0.05")
    assert "machine:" in out and "x" in out


def test_generate_job_speed_smoke():
    out = run("benchmarks/generate_job_speed.py", "--smoke")
    assert out.startswith("machine: CPU")
    assert " hf: " in out and "fast: " in out and "fast is" in out


def test_capability_cost_smoke():
    out = run("benchmarks/capability_cost.py", "--smoke")
    assert "machine: CPU" in out
    for task in ("bench_mmlu", "bench_gsm8k", "bench_truthfulqa_mc2"):
        assert f"{task}: " in out
    assert "capability job / generate job:" in out
