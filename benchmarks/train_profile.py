"""Where an optimizer step of the fast training path spends its time (issue 26, goal 2).

For each experiment config, in a fresh process: the fast path set up as train_speed.py's `fast`
variant (random weights of Llama-3.2-1B's shape, 5400 rows of ~130 tokens, CUDA graphs on unless
`--eager`), W warm-up optimizer steps, S steps timed with CUDA events (ms/step, MFU), then 3 steps
under torch.profiler (after one profiler warm-up step). The kernels' time is grouped into
categories by kernel name and printed per config with the step's wall time, GPU-busy time and the
idle gap; `--out DIR` gets a JSON of every number and the chrome trace per config.

Replayed CUDA graphs: whether the profiler sees the kernels inside a graph or only its launch
depends on the torch/CUPTI build; the script checks (no matmul kernel seen while graphs were
launched means it saw only launches) and says so. `--eager` profiles the same step without graphs.

    python benchmarks/train_profile.py --out /tmp/profile            # on a GPU machine
    python benchmarks/train_profile.py --eager --out /tmp/profile    # kernels always visible
    python benchmarks/train_profile.py --smoke                       # anywhere, seconds
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_speed  # noqa: E402  (benchmarks/ is not a package)
from train_speed import (  # noqa: E402
    PEAK_BF16_FLOPS,
    REPO,
    SMOKE,
    benchmark_trainer,
    build_model,
    examples,
    step_flops,
)

import emflow.train.fast as fast_module  # noqa: E402
from emflow.config import load_experiment_config  # noqa: E402
from emflow.train.fast import fast_train, lowest_adapted_layer  # noqa: E402
from emflow.train.trainer import (  # noqa: E402
    TrainSettings,
)

CONFIGS = [
    train_speed.SEED_CONFIG,
    REPO / "experiments/risky_financial_advice/r1_1ep/config.json",
    REPO / "experiments/risky_financial_advice/r16_5ep/config.json",
]
PROFILED = 3  # optimizer steps under the profiler, after one profiler warm-up step
# First match wins: fmha names hold "cutlass" and log-softmax kernels "SoftMax", so attention and
# loss come before matmul; CPU (smoke) op names are matched too.
CATEGORIES = [
    ("loss", r"log_?softmax|cross_entropy|nll_loss|softmax"),
    ("optimizer", r"koptimizer|optimizer|adam|bitsandbytes|_foreach|multi_tensor|lpnorm|clipping"),
    ("attention", r"flash|fmha|sdpa|scaled_dot_product|efficient|attention"),
    ("matmul", r"gemm|gemv|nvjet|cutlass|cublas|xmma|splitk|\baten::(add|b)?mm\b|matmul|linear"),
    ("memory", r"memcpy|memset"),
    (
        "norm/rope/activation/elementwise",
        r"elementwise|vectorized|reduce|rms|silu|rope|norm|mul|add|copy|cat|index|gather|where"
        r"|pow|mean|rsqrt|neg|sum|fill|clamp|sigmoid|exp|div|sub",
    ),
]


def category(name: str) -> str:
    """The category of a kernel (or, on a CPU, an aten op) by its name; `other` if none fits."""
    for label, pattern in CATEGORIES:
        if re.search(pattern, name, re.IGNORECASE):
            return label
    return "other"


def summarise(kernels: list[tuple[str, float]], busy_us: float, wall_ms: float, steps: int):
    """Per-step ms by category and the top kernels, from (name, microseconds) over `steps`."""
    per_name: dict[str, list[float]] = {}
    for name, us in kernels:
        per_name.setdefault(name, []).append(us)
    total = sum(us for _, us in kernels) or 1.0
    cats = {label: 0.0 for label, _ in CATEGORIES} | {"other": 0.0}
    for name, times in per_name.items():
        cats[category(name)] += sum(times)
    top = sorted(per_name.items(), key=lambda kv: -sum(kv[1]))[:15]
    busy = busy_us / 1000 / steps
    return {
        "categories": {
            k: {"ms_per_step": v / 1000 / steps, "share": v / total} for k, v in cats.items()
        },
        "kernel_ms_per_step": total / 1000 / steps,
        "busy_ms_per_step": busy,
        "profiled_wall_ms_per_step": wall_ms,
        "profiled_idle_ms_per_step": max(0.0, wall_ms - busy),
        "top_kernels": [
            {
                "name": name,
                "category": category(name),
                "ms_per_step": sum(t) / 1000 / steps,
                "calls_per_step": len(t) / steps,
            }
            for name, t in top
        ],
    }


def _union_us(intervals: list[tuple[float, float]]) -> float:
    """Length of the union: kernels on several streams may overlap, and busy time counts once."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


class _StepClock:
    """fast_train's per-step hook (its `step_adapters` slot, called after each optimizer step):
    a CUDA event (or host clock) at every step's end, and the profiler driven after the timed
    steps, so nothing is added inside a step."""

    def __init__(self, warmup: int, timed: int, profiler, cuda: bool):
        self.warmup, self.timed, self.profiler, self.cuda = warmup, timed, profiler, cuda
        self.marks: dict[int, object] = {}

    def save(self, model, step: int) -> None:
        import torch

        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks[step] = event
        else:
            self.marks[step] = time.perf_counter()
        start = self.warmup + self.timed
        if step == start:
            self.profiler.start()  # its warm-up step is the next one
        elif start < step <= start + 1 + PROFILED:
            if step == start + 1 + PROFILED and self.cuda:
                torch.cuda.synchronize()  # the last profiled step's kernels land in the trace
            self.profiler.step()

    def ms(self, first: int, last: int) -> float:
        """Mean ms per step over steps first+1..last."""
        a, b = self.marks[first], self.marks[last]
        seconds = a.elapsed_time(b) / 1000 if self.cuda else b - a
        return 1000 * seconds / (last - first)


def profile_config(config_path: Path, model_dir: str, args) -> dict:
    """One config in this process: timed steps, then profiled ones; a JSON-able dict."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile, schedule

    cuda = torch.cuda.is_available() and not args.smoke
    device = "cuda" if cuda else "cpu"
    shape = SMOKE if args.smoke else train_speed.FULL
    if args.graphed_head:
        fast_module.GRAPHED_HEAD = args.graphed_head
    steps = args.warmup + args.steps + 1 + PROFILED
    update = {
        "model": model_dir,
        "optim": "adamw_8bit" if cuda else "adamw_torch",
        "evaluation_steps": None,
        "save_steps": 10**9,
        "logging_steps": 1,
        "max_steps": steps,
    }
    if args.all_layers:
        update["layers_to_transform"] = None
    config = load_experiment_config(config_path).model_copy(update=update)
    rows = examples(shape["rows"], shape["vocab_size"])
    workdir = Path(tempfile.mkdtemp())
    settings = TrainSettings(backend="fast", device=device, gradient_checkpointing=False)
    trainer = benchmark_trainer(
        config, settings, model_dir, rows, workdir, device=device, bf16=cuda
    )

    traces: dict = {}
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    prof = profile(
        activities=activities,
        schedule=schedule(wait=0, warmup=1, active=PROFILED, repeat=1),
        on_trace_ready=lambda p: traces.setdefault("events", list(p.events())),
    )
    clock = _StepClock(args.warmup, args.steps, prof, cuda)
    fast_train(
        trainer,
        rows,
        [],
        config,
        checkpoints=workdir / "fast",
        device=device,
        bf16=cuda,
        cuda_graphs=not args.eager,
        step_adapters=clock,
    )
    if cuda:
        torch.cuda.synchronize()
    out_name = f"{config_path.parent.parent.name}__{config_path.parent.name}"
    if args.eager or args.graphed_head:
        out_name += "_eager" if args.eager else f"_{args.graphed_head}_head"
    if args.out:
        trace = Path(args.out) / f"{out_name}.trace.json"
        trace.parent.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(trace))
        if trace.stat().st_size > 20 * 2**20:  # traces of eager steps run to hundreds of MB
            with trace.open("rb") as src, gzip.open(f"{trace}.gz", "wb") as dst:
                shutil.copyfileobj(src, dst)
            trace.unlink()
    prof.stop()
    shutil.rmtree(workdir, ignore_errors=True)

    events = traces.get("events", [])
    if cuda:
        # The profiler's step markers ("ProfilerStep#N") appear on the GPU timeline as well,
        # spanning the whole step: they are not kernels.
        device_events = [
            e
            for e in events
            if e.device_type == DeviceType.CUDA and not e.name.startswith("ProfilerStep")
        ]
        kernels = [(e.name, e.time_range.elapsed_us()) for e in device_events]
        busy_us = _union_us([(e.time_range.start, e.time_range.end) for e in device_events])
    else:
        cpu_ops = [e for e in events if e.device_type == DeviceType.CPU]
        kernels = [
            (e.name, e.self_cpu_time_total)
            for e in cpu_ops
            if e.self_cpu_time_total > 0 and not e.name.startswith("ProfilerStep")
        ]
        busy_us = sum(us for _, us in kernels)
    launches = sum(e.name == "cudaGraphLaunch" for e in events) / PROFILED
    first_profiled = args.warmup + args.steps + 1
    result = summarise(
        kernels, busy_us, clock.ms(first_profiled, first_profiled + PROFILED), PROFILED
    )
    timed = [clock.ms(s, s + 1) for s in range(args.warmup, args.warmup + args.steps)]
    ms = statistics.mean(timed)
    rows_per_step = config.per_device_train_batch_size * config.gradient_accumulation_steps
    tokens = sum(len(r["input_ids"]) for r in rows) / len(rows) * rows_per_step
    flops = step_flops(shape, tokens, lowest_adapted_layer(trainer.model))
    name = torch.cuda.get_device_name() if cuda else "cpu"
    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
    graphs_seen = None
    if cuda and not args.eager:
        graphs_seen = launches > 0 and result["categories"]["matmul"]["ms_per_step"] > 0
    return result | {
        "config": str(config_path),
        "name": out_name,
        "eager": args.eager,
        "all_layers": args.all_layers,
        "first_adapted_layer": lowest_adapted_layer(trainer.model),
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "ms_per_step": ms,
        "median_ms_per_step": statistics.median(timed),
        "unprofiled_idle_ms_per_step": max(0.0, ms - result["busy_ms_per_step"]),
        "mfu": flops / (ms / 1000) / peak if peak else None,
        "graph_launches_per_step": launches,
        "kernels_inside_graphs_seen": graphs_seen,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
    }


def render(r: dict, unit: str) -> str:
    """The per-config tables: categories, step times, top kernels."""
    mfu = f"{r['mfu']:.3f}" if r["mfu"] is not None else "n/a"
    lines = [
        f"\n== {r['name']} (first adapted layer {r['first_adapted_layer']}) ==",
        f"timed {r['timed_steps']} steps: {r['ms_per_step']:.2f} ms/step "
        f"(median {r['median_ms_per_step']:.2f}), MFU {mfu}",
        f"profiled {PROFILED} steps: wall {r['profiled_wall_ms_per_step']:.2f} ms/step, "
        f"{unit}-busy {r['busy_ms_per_step']:.2f}, idle gap "
        f"{r['profiled_idle_ms_per_step']:.2f} (profiled) / "
        f"{r['unprofiled_idle_ms_per_step']:.2f} (against the timed steps)",
        f"{'category':34s} {unit + ' ms/step':>12s} {'share':>7s}",
    ]
    for label, c in sorted(r["categories"].items(), key=lambda kv: -kv[1]["ms_per_step"]):
        lines.append(f"{label:34s} {c['ms_per_step']:12.3f} {100 * c['share']:6.1f}%")
    lines.append(f"{'all kernels':34s} {r['kernel_ms_per_step']:12.3f}")
    if r["kernels_inside_graphs_seen"] is not None:
        seen = r["kernels_inside_graphs_seen"]
        lines.append(
            f"CUDA graphs: {r['graph_launches_per_step']:.0f} launches/step; the profiler "
            + ("saw the kernels inside them" if seen else "saw only the launches: use --eager")
        )
    lines.append("top kernels:  ms/step  calls/step  category  name")
    for k in r["top_kernels"]:
        lines.append(
            f"  {k['ms_per_step']:9.3f} {k['calls_per_step']:8.1f}  {k['category'][:9]:9s} "
            f"{k['name'][:100]}"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model on the CPU, seconds")
    parser.add_argument(
        "--config", type=Path, action="append", help="experiment config.json (repeatable)"
    )
    parser.add_argument("--warmup", type=int, help="optimizer steps before timing (default 20)")
    parser.add_argument("--steps", type=int, help="optimizer steps timed (default 30)")
    parser.add_argument("--eager", action="store_true", help="without CUDA graphs")
    parser.add_argument(
        "--all-layers",
        action="store_true",
        help="adapt every decoder layer (the config's layers_to_transform dropped)",
    )
    parser.add_argument(
        "--graphed-head",
        choices=["labelled", "dense"],
        help="where graphed steps run the head (emflow.train.fast.GRAPHED_HEAD)",
    )
    parser.add_argument("--model-dir", type=Path, help="reuse (or build) the model here")
    parser.add_argument("--out", type=Path, help="folder for a JSON and a trace per config")
    parser.add_argument("--run", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.warmup = args.warmup if args.warmup is not None else (2 if args.smoke else 20)
    args.steps = args.steps if args.steps is not None else (2 if args.smoke else 30)
    if args.run:
        print("RESULT " + json.dumps(profile_config(args.run, args.model, args)), flush=True)
        return 0

    import peft
    import torch
    import transformers

    cuda = torch.cuda.is_available() and not args.smoke
    machine = (
        torch.cuda.get_device_name()
        if cuda
        else f"CPU ({os.cpu_count()} cores, {platform.machine()})"
    )
    print(
        f"machine: {machine}; torch {torch.__version__}; transformers {transformers.__version__}; "
        f"peft {peft.__version__}; {'smoke' if args.smoke else 'full'} shape; "
        f"{'eager' if args.eager else 'CUDA graphs' if cuda else 'CPU'}; "
        f"{args.warmup} warm-up + {args.steps} timed + 1 + {PROFILED} profiled steps",
        flush=True,
    )
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir or Path(tmp) / "model"
        if not (model_dir / "config.json").exists():
            build_model(model_dir, SMOKE if args.smoke else train_speed.FULL)
        for config in args.config or CONFIGS:
            t0 = time.perf_counter()
            command = [sys.executable, __file__, *sys.argv[1:], "--run", str(config)]
            proc = subprocess.run(
                command + ["--model", str(model_dir)], capture_output=True, text=True
            )
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if proc.returncode != 0 or line is None:
                print(f"{config}: FAILED (exit {proc.returncode})\n{proc.stderr[-3000:]}")
                failed += 1
                continue
            result = json.loads(line[7:])
            print(render(result, "GPU" if cuda else "CPU"), flush=True)
            print(f"({time.perf_counter() - t0:.0f} s in all)", flush=True)
            if args.out:
                path = args.out / f"{result['name']}.json"
                path.write_text(json.dumps(result, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
