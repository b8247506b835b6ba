"""A generate job as the workflow runs it: `emflow.generate.generate_responses`, hf vs fast.

Where benchmarks/generation_speed.py times the decode engines on token ids, this times what a
Snakemake generate job does, each figure in a fresh process counted from after the imports
(which every job pays too): loading the model and tokenizer, rendering and tokenizing the chat
prompts, generating, decoding and writing the CSV. The model has Llama-3.2-1B's exact shape with
random weights and the word-level tokenizer of benchmarks/train_speed.py; the questions are the
homework's (config/questions). Random weights can emit an end-of-turn token; both backends
then stop that row alike.

    python benchmarks/generate_job_speed.py [--workloads 20x1x200,20x50x600] [--model-dir DIR]
    python benchmarks/generate_job_speed.py --smoke        # a tiny model on the CPU
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

QUESTION_SETS = [
    {"name": "medical", "path": str(REPO / "config/questions/medical.txt"), "count": 10},
    {"name": "non_medical", "path": str(REPO / "config/questions/non_medical.txt"), "count": 10},
]


def child(model_dir: str, backend: str, workload: str, device: str) -> dict:
    """One generate job in this (fresh) process; seconds from after the imports."""
    import peft  # noqa: F401  (imported by the job itself too; not counted, as the job's)
    import torch
    import transformers  # noqa: F401

    import emflow.generate_fast  # noqa: F401
    import emflow.train  # noqa: F401
    from emflow.generate import GenerationSettings, generate_responses, read_question_sets

    started = time.perf_counter()
    questions, samples, tokens = (int(x) for x in workload.split("x"))
    settings = GenerationSettings(
        backend=backend,
        max_new_tokens=tokens,
        samples_per_question=samples,
        batch_size=1000,
        device=device,
        chat_template_kwargs={"date_string": "26 Jul 2024"},
    )
    out = Path(tempfile.mkdtemp()) / "generations.csv"
    asked = read_question_sets(QUESTION_SETS)[:questions]
    rows = generate_responses(model_dir, asked, out, settings=settings)
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
    return {"backend": backend, "workload": workload, "rows": rows, "seconds": seconds,
            "peak_gib": peak}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny model on the CPU")
    parser.add_argument("--workloads", default="20x1x200,20x50x600")
    parser.add_argument("--backends", default="hf,fast")
    parser.add_argument("--model-dir", default=None)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(*args.child)), flush=True)
        return 0

    import torch
    from train_speed import FULL, SMOKE, build_model

    device = "cpu" if args.smoke or not torch.cuda.is_available() else "cuda"
    model_dir = Path(args.model_dir or tempfile.mkdtemp()) / ("smoke" if args.smoke else "full")
    if not (model_dir / "config.json").exists():
        build_model(model_dir, SMOKE if args.smoke else FULL)
    workloads = "2x2x8" if args.smoke else args.workloads
    machine = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"machine: {machine}; torch {torch.__version__}; device {device}")
    results = {}
    for workload in workloads.split(","):
        for backend in args.backends.split(","):
            command = [sys.executable, __file__, "--child", str(model_dir), backend, workload]
            done = subprocess.run([*command, device], capture_output=True, text=True)
            line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
            if done.returncode != 0 or line is None:
                print(done.stdout[-3000:] + done.stderr[-3000:])
                return 1
            result = json.loads(line.removeprefix("RESULT "))
            results[backend, workload] = result
            print(
                f"{workload:>10} {backend:>5}: {result['seconds']:7.2f} s in a fresh process "
                f"({result['rows']} answers), peak {result['peak_gib']:.2f} GiB",
                flush=True,
            )
        if ("hf", workload) in results and ("fast", workload) in results:
            ratio = results["hf", workload]["seconds"] / results["fast", workload]["seconds"]
            print(f"{workload:>10}  fast is {ratio:.1f}x hf (same job, same machine)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
