"""A generate job as the workflow runs it: `emflow.generate.job.generate_for_adapters`, hf vs fast.

Where benchmarks/generation_speed.py times the decode engines on token ids, this times what a
Snakemake generate job does, each figure in a fresh process counted from after the imports
(which every job pays too): loading the model and tokenizer, rendering and tokenizing the chat
prompts, generating, decoding and writing the CSV. The model has Llama-3.2-1B's exact shape with
random weights and the word-level tokenizer of benchmarks/train_speed.py; the questions are the
homework's (config/questions). Random weights can emit an end-of-turn token; both backends
then stop that row alike. `--backends fast_before,fast` also times the fast backend as it was
before issue 26 (SDPA attention over the cache, sampling over the whole vocabulary) in the same
call.

`--adapters N[,M]` adds the many-adapters figure: N random rank-16 LoRA adapters on all seven
projections (as the seed's runs train them), 20 questions x 10 samples x 200 tokens each,
answered by one job that loads the base once (emflow.generate.adapters) vs N jobs of their
own, one after another in fresh processes (what N generate jobs on one GPU cost); `fast` backend.

    python benchmarks/generate_job_speed.py [--workloads 20x1x200,20x50x600] [--adapters 8]
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


def child(model_dir: str, backend: str, workload: str, device: str, adapters: str = "") -> dict:
    """One generate job in this (fresh) process; seconds from after the imports.

    `adapters`: comma-separated adapter folders, all answered by this one job ("" = the base).
    """
    import peft  # noqa: F401  (imported by the job itself too; not counted, as the job's)
    import torch
    import transformers  # noqa: F401

    import emflow.train.trainer  # noqa: F401
    from emflow.generate.backend import GenerationOutput
    from emflow.generate.job import generate_for_adapters
    from emflow.generate.settings import GenerationSettings
    from emflow.questions import read_question_sets

    if backend == "fast_before":  # the fast backend before issue 26, as a same-call baseline
        from emflow.generate import fast_decode, sampling

        fast_decode.DECODE_ATTENTION = "sdpa"  # torch's SDPA with a mask, not the Triton kernel
        sampling.CANDIDATE_LIMIT = 0  # warpers and draw over the whole vocabulary
    started = time.perf_counter()
    questions, samples, tokens = (int(x) for x in workload.split("x"))
    settings = GenerationSettings(
        backend=backend.removesuffix("_before"),
        max_new_tokens=tokens,
        samples_per_question=samples,
        batch_size=1000,
        device=device,
        chat_template_kwargs={"date_string": "26 Jul 2024"},
    )
    out = Path(tempfile.mkdtemp())
    asked = read_question_sets(QUESTION_SETS, samples_per_question=samples)[:questions]
    folders = adapters.split(",") if adapters else [None]
    outputs = [GenerationOutput(out / f"{i}.csv", a) for i, a in enumerate(folders)]
    rows = sum(generate_for_adapters(model_dir, asked, outputs, settings=settings))
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
    return {"backend": backend, "workload": workload, "rows": rows, "seconds": seconds,
            "peak_gib": peak, "csv_sha": [_sha(o.csv) for o in outputs]}  # fmt: skip


def _sha(path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]


def build_adapters(model_dir: Path, count: int, device: str) -> list[str]:
    """`count` rank-16 LoRA adapters on all seven projections with random non-zero B."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    modules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).to(device)
    config = LoraConfig(r=16, lora_alpha=16, target_modules=modules, init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    folders = []
    for i in range(count):
        torch.manual_seed(i)
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if "lora_" in name:
                    param.normal_(std=0.02)
        folder = model_dir.parent / f"adapter{i}"
        peft_model.save_pretrained(folder)
        folders.append(str(folder))
    return folders


def run_child(*args: str) -> dict | None:
    command = [sys.executable, __file__, "--child", *args]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    if done.returncode != 0 or line is None:
        print(done.stdout[-3000:] + done.stderr[-3000:])
        return None
    return json.loads(line.removeprefix("RESULT ")) | {"wall": wall}


def many_adapters(
    model_dir: Path, count: int, workload: str, device: str, separate_jobs: bool = True
) -> bool:
    """One job for `count` adapters vs `count` jobs of one adapter each (unless not
    `separate_jobs`: then the one job only, e.g. a checkpoint sweep's)."""
    folders = build_adapters(model_dir, count, device)
    print(f"built {count} adapters; timing one job, then {count} jobs", flush=True)
    together = run_child(str(model_dir), "fast", workload, device, ",".join(folders))
    if together is None:
        return False
    print(
        f"{count} adapters x {workload}: one job {together['seconds']:.2f} s after its imports, "
        f"{together['wall']:.2f} s with them (peak {together['peak_gib']:.2f} GiB)",
        flush=True,
    )
    if not separate_jobs:
        return True
    separate = [run_child(str(model_dir), "fast", workload, device, f) for f in folders]
    if any(r is None for r in separate):
        return False
    alone = sum(r["seconds"] for r in separate)
    same = together["csv_sha"] == [r["csv_sha"][0] for r in separate]
    print(
        f"{count} jobs {alone:.2f} s in all after their imports, "
        f"{sum(r['wall'] for r in separate):.2f} s with them "
        f"({min(r['seconds'] for r in separate):.2f}-{max(r['seconds'] for r in separate):.2f} "
        f"s each, peak {max(r['peak_gib'] for r in separate):.2f} GiB); one job is "
        f"{alone / together['seconds']:.1f}x faster; CSVs identical: {same}",
        flush=True,
    )
    return same


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny model on the CPU")
    parser.add_argument("--workloads", default="20x1x200,20x50x600")
    parser.add_argument("--backends", default="hf,fast")
    parser.add_argument("--model-dir", default=None)
    parser.add_argument("--adapters", default="", help="many-adapters figures: N[,M...]")
    parser.add_argument("--one-job", default="", help="N[,M]: the one job only, N adapters")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
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
    for workload in workloads.split(",") if workloads else []:
        for backend in args.backends.split(","):
            result = run_child(str(model_dir), backend, workload, device)
            if result is None:
                return 1
            results[backend, workload] = result
            print(
                f"{workload:>10} {backend:>5}: {result['seconds']:7.2f} s in a fresh process "
                f"({result['rows']} answers), peak {result['peak_gib']:.2f} GiB",
                flush=True,
            )
        if ("hf", workload) in results and ("fast", workload) in results:
            ratio = results["hf", workload]["seconds"] / results["fast", workload]["seconds"]
            print(f"{workload:>10}  fast is {ratio:.1f}x hf (same job, same machine)")
    if args.adapters or args.one_job or args.smoke:
        adapters_workload = "2x2x8" if args.smoke else "20x10x200"
        for count in args.adapters.split(",") if args.adapters else ["2"]:
            if not many_adapters(model_dir, int(count), adapters_workload, device):
                return 1
        for count in args.one_job.split(",") if args.one_job else []:
            if not many_adapters(model_dir, int(count), adapters_workload, device, False):
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
