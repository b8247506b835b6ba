"""The fast path's step time with KL regularisation on against off, on the exact Llama-3.2-1B shape.

The seed's mixed config (rsLoRA r16 on layer 8, batch 2 x 8 accumulation, adamw_8bit) on rows
of realistic length (train_speed.py's), with and without the paper's KL term (`kl_weight` 1e5,
`kl_batch_size` 8: each optimizer step runs 8 KL batches, one per micro-batch, each through the
adapted layers, and at its first use once more with the adapters off for the reference). Each
variant trains `--steps` optimizer steps in this process after `--warmup` untimed ones (which
include capturing the CUDA graphs and computing each KL batch's frozen layers and reference
once, emflow.train.fast_kl); the ratio is against the same path with KL off, measured in the
same run.

    python benchmarks/kl_speed.py            # on a GPU machine, about 2 minutes
    python benchmarks/kl_speed.py --smoke    # a tiny model on the CPU
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_speed import (  # noqa: E402
    FULL,
    REPO,
    SEED_CONFIG,
    SMOKE,
    benchmark_trainer,
    build_model,
    examples,
)

sys.path.insert(0, str(REPO))

VARIANTS = {  # name: (KL on, CUDA graphs)
    "fast": (False, True),
    "fast_kl": (True, True),
    "fast_eager": (False, False),
    "fast_eager_kl": (True, False),
}


class StepTimer:
    """Stands in for fast_train's `step_adapters` (called after every optimizer step): waits for
    the GPU only at the first timed step and the last, so the steps between run as in training."""

    def __init__(self, warmup: int, last: int, sync) -> None:
        self.warmup, self.last, self.sync = warmup, last, sync
        self.start = self.end = 0.0

    def save(self, model, step: int) -> None:
        if step in (self.warmup, self.last):
            self.sync()
            if step == self.warmup:
                self.start = time.perf_counter()
            else:
                self.end = time.perf_counter()


def run_variant(name: str, model_dir: str, shape: dict, steps: int, warmup: int) -> dict:
    import torch

    from emflow.config import load_experiment_config
    from emflow.train.fast import fast_train
    from emflow.train.kl import KLBatches, KLRegularizer
    from emflow.train.settings import TrainSettings

    kl_on, graphs = VARIANTS[name]
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    total = warmup + steps
    config = load_experiment_config(SEED_CONFIG).model_copy(
        update={
            "model": model_dir,
            "optim": "adamw_8bit" if cuda else "adamw_torch",
            "evaluation_steps": None,
            "save_steps": 10**9,
            "logging_steps": 1,
            "max_steps": total,
        }
    )
    rows_per_step = config.per_device_train_batch_size * config.gradient_accumulation_steps
    rows = examples(rows_per_step * total, shape["vocab_size"])
    kl = None
    if kl_on:
        kl_rows = [
            {"input_ids": r["input_ids"], "attention_mask": [1] * len(r["input_ids"])}
            for r in examples(400, shape["vocab_size"], seed=1)
        ]
        kl = KLRegularizer(KLBatches(kl_rows, 8, pad_id=5), 1e5)
    workdir = Path(tempfile.mkdtemp())
    settings = TrainSettings(backend="fast", device=device)
    trainer = benchmark_trainer(
        config, settings, model_dir, rows, workdir, device=device, bf16=cuda
    )
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    timer = StepTimer(warmup, total, sync)
    history = fast_train(
        trainer,
        rows,
        [],
        config,
        checkpoints=workdir / "fast",
        device=device,
        bf16=cuda,
        cuda_graphs=graphs,
        step_adapters=timer,
        kl=kl,
    )
    losses = [h for h in history if "loss" in h]
    return {
        "variant": name,
        "ms_per_step": 1000 * (timer.end - timer.start) / steps,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "last_loss": losses[-1]["loss"],
        "last_kl_loss": losses[-1].get("kl_loss"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model on the CPU")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps timed")
    parser.add_argument("--warmup", type=int, default=8, help="untimed steps before them")
    args = parser.parse_args()
    import torch

    shape = SMOKE if args.smoke else FULL
    steps, warmup = (4, 2) if args.smoke else (args.steps, args.warmup)
    cuda = torch.cuda.is_available()
    machine = (
        torch.cuda.get_device_name()
        if cuda
        else f"CPU ({os.cpu_count()} cores, {platform.machine()})"
    )
    print(f"machine: {machine}; torch {torch.__version__}; {'smoke' if args.smoke else 'full'}")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        build_model(model_dir, shape)
        for name in args.variants.split(","):
            if VARIANTS[name][1] and not cuda:
                continue  # CUDA graphs need a GPU
            t0 = time.perf_counter()
            results[name] = run_variant(name, str(model_dir), shape, steps, warmup)
            if cuda:
                torch.cuda.empty_cache()
            print(f"{name} ({time.perf_counter() - t0:.0f} s in all): {results[name]}", flush=True)
    print(f"\nKL on vs off, {steps} timed steps after {warmup}, same machine, same run:")
    for off in ("fast", "fast_eager"):
        on = off + "_kl"
        if off in results and on in results:
            a, b = results[off]["ms_per_step"], results[on]["ms_per_step"]
            print(f"  {off:10s} {a:8.1f} ms/step   KL on {b:8.1f} ms/step   x{b / a:.2f} the time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
