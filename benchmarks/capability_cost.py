"""What one target's capability job costs beside its generate job, on the same machine.

The capabilities rule calls `emflow.capabilities.harness.evaluate_capabilities` once per target
(base model, or base + a run's LoRA adapter) with config/paper.yaml's suggested set: MMLU 0-shot
at 20 items per subject (57 x 20 = 1140), GSM8K 5-shot on 250 problems (generate_until, up to
256 new tokens), TruthfulQA MC2 on all 817. The harness's datasets cannot be downloaded here, so
this writes SHAPE-ALIKE tasks into a temporary include_path folder, in the harness's own YAML
format with local JSONL rows, copying each real task's prompt (doc_to_text, choices, few-shot
split, stop strings, max_gen_toks, splits, mmlu's 57-subtask group) and drawing text lengths in
tokens like the real data's: with train_speed.py's word-level tokenizer a word is one token.

- bench_mmlu: a group of 57 subtasks, 4 choices (" A".." D"), questions of 40-90 tokens plus
  four 4-8-token choices (60-120 tokens of question), mmlu's prompt and description line.
- bench_gsm8k: "Question: ...\nAnswer:" with 5 examples from a train split (problems of 30-90
  tokens, worked answers of 50-170 tokens ending "#### N", about 950 tokens of context), greedy,
  until ["Question:", "</s>", "<|eot_id|>"], max_gen_toks 256. Random weights seldom emit a stop
  string, so nearly every batch decodes all 256 steps: an upper bound on the real job.
- bench_truthfulqa_mc2: truthfulqa's 6-pair "Q: ...\nA: ..." primer (~170 tokens), questions of
  6-20 tokens, 2-20 answers (about 7.5) of 5-20 tokens, scored with mc2's own process_results.

The model is random weights of Llama-3.2-1B's exact shape (train_speed.build_model) with a random
rank-16 LoRA adapter on all seven projections (generate_job_speed.build_adapters). Each job runs
in a fresh process timed from after its imports; the generate job is generate_job_speed's
(`fast` backend, `generate_for_adapters`, the same adapter).

    python benchmarks/capability_cost.py [--workloads 20x1x200,8x50x600] [--model-dir DIR]
    python benchmarks/capability_cost.py --smoke        # a tiny model on the CPU
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

# config/paper.yaml's task names -> the shape-alike task written here.
ALIKE = {"mmlu": "bench_mmlu", "gsm8k": "bench_gsm8k", "truthfulqa_mc2": "bench_truthfulqa_mc2"}
# Item counts (full, smoke): mmlu rows per subject, gsm8k test/train rows, truthfulqa rows.
SIZES = {
    "full": {"subjects": 57, "per_subject": 25, "gsm8k": 300, "train": 60, "tqa": 817, "gen": 256},
    "smoke": {"subjects": 3, "per_subject": 3, "gsm8k": 3, "train": 8, "tqa": 3, "gen": 8},
}
SMOKE_LIMITS = {"mmlu": 2, "gsm8k": 2, "truthfulqa_mc2": None}

UTILS = '''"""Rows of the shape-alike tasks, read from the JSONL files beside this one."""

import json
from pathlib import Path

import datasets
import numpy as np


def load_rows(rows, **_metadata):
    splits = {}
    for path in sorted(Path(__file__).parent.glob(f"{rows}__*.jsonl")):
        with path.open(encoding="utf-8") as lines:
            split = path.stem.split("__")[1]
            splits[split] = datasets.Dataset.from_list([json.loads(x) for x in lines])
    return datasets.DatasetDict(splits)


def process_results_mc2(doc, results):
    # lm_eval/tasks/truthfulqa/utils.py's, without that module's rouge/sacrebleu imports.
    ll, _ = zip(*results)
    probs = np.exp(np.array(ll))
    probs_norm = probs / np.sum(probs)
    labels = np.array(doc["mc2_targets"]["labels"])
    return {"acc": float(np.sum(probs_norm[labels == 1]))}
'''


def write_tasks(folder: Path, smoke: bool, vocab_size: int) -> None:
    """The three shape-alike tasks (YAML + utils.py + JSONL rows) in `folder`."""
    rng = random.Random(0)
    sizes = SIZES["smoke" if smoke else "full"]
    scale = 4 if smoke else 1  # smoke: a quarter of the lengths

    def text(low: int, high: int) -> str:
        count = max(1, rng.randint(low, high) // scale)
        return " ".join(f"t{rng.randrange(100, vocab_size)}" for _ in range(count))

    def rows(name: str, split: str, items: list[dict]) -> None:
        lines = "".join(json.dumps(item) + "\n" for item in items)
        (folder / f"{name}__{split}.jsonl").write_text(lines, encoding="utf-8")

    def task(name: str, config: dict) -> None:
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "utils.py").write_text(UTILS, encoding="utf-8")
    loader = "!function utils.load_rows"
    subtasks = []
    for s in range(sizes["subjects"]):
        name = f"bench_mmlu_s{s:02d}"
        subtasks.append(name)
        for split, count in (("test", sizes["per_subject"]), ("dev", 5)):
            mmlu = [
                {"question": text(40, 90), "choices": [text(4, 8) for _ in range(4)],
                 "answer": rng.randrange(4)}
                for _ in range(count)
            ]  # fmt: skip
            rows(name, split, mmlu)
        task(name, {
            "task": name, "custom_dataset": loader, "dataset_kwargs": {"rows": name},
            "output_type": "multiple_choice", "test_split": "test", "fewshot_split": "dev",
            "fewshot_config": {"sampler": "first_n"},
            "description": f"The following are multiple choice questions (with answers) "
                           f"about subject {s}.\n\n",
            "doc_to_text": "{{question.strip()}}\nA. {{choices[0]}}\nB. {{choices[1]}}\n"
                           "C. {{choices[2]}}\nD. {{choices[3]}}\nAnswer:",
            "doc_to_choice": ["A", "B", "C", "D"], "doc_to_target": "answer",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
            "metadata": {"version": 1.0},
        })  # fmt: skip
    task("bench_mmlu", {
        "group": "bench_mmlu", "task": subtasks,
        "aggregate_metric_list": [{"metric": "acc", "weight_by_size": True}],
        "metadata": {"version": 2},
    })  # fmt: skip
    for split, count in (("test", sizes["gsm8k"]), ("train", sizes["train"])):
        problems = [
            {"question": text(30, 90), "answer": f"{text(50, 170)}\n#### {rng.randrange(1000)}"}
            for _ in range(count)
        ]
        rows("bench_gsm8k", split, problems)
    task("bench_gsm8k", {
        "task": "bench_gsm8k", "custom_dataset": loader, "dataset_kwargs": {"rows": "bench_gsm8k"},
        "output_type": "generate_until", "training_split": "train", "fewshot_split": "train",
        "test_split": "test", "doc_to_text": "Question: {{question}}\nAnswer:",
        "doc_to_target": "{{answer}}",
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
                         "ignore_case": True, "ignore_punctuation": False,
                         "regexes_to_ignore": [",", "\\$", "(?s).*#### ", "\\.$"]}],
        "generation_kwargs": {"until": ["Question:", "</s>", "<|eot_id|>"], "do_sample": False,
                              "temperature": 0.0, "max_gen_toks": sizes["gen"]},
        "repeats": 1, "num_fewshot": 5,
        "filter_list": [
            {"name": "strict-match", "filter": [
                {"function": "regex", "regex_pattern": "#### (\\-?[0-9\\.\\,]+)"},
                {"function": "take_first"}]},
            {"name": "flexible-extract", "filter": [
                {"function": "regex", "group_select": -1,
                 "regex_pattern": "(-?[$0-9.,]{2,})|(-?[0-9]+)"},
                {"function": "take_first"}]},
        ],
        "metadata": {"version": 3.0},
    })  # fmt: skip
    primer = "\n\n".join(f"Q: {text(8, 14)}\nA: {text(10, 18)}" for _ in range(6))
    tqa = []
    for _ in range(sizes["tqa"]):
        count = min(20, max(2, round(rng.gauss(7.5, 3))))
        true = rng.randint(1, count - 1)
        choices = [text(5, 20) for _ in range(count)]
        labels = [1] * true + [0] * (count - true)
        tqa.append({"question": text(6, 20), "mc2_targets": {"choices": choices, "labels": labels}})
    rows("bench_truthfulqa_mc2", "validation", tqa)
    task("bench_truthfulqa_mc2", {
        "task": "bench_truthfulqa_mc2", "custom_dataset": loader,
        "dataset_kwargs": {"rows": "bench_truthfulqa_mc2"}, "output_type": "multiple_choice",
        "validation_split": "validation", "num_fewshot": 0,
        "doc_to_text": primer + "\n\nQ: {{question}}\nA:",
        "doc_to_target": 0, "doc_to_choice": "{{mc2_targets.choices}}",
        "process_results": "!function utils.process_results_mc2",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 3.0},
    })  # fmt: skip
    # yaml.safe_dump quotes the harness's `!function` tags as strings; unquote them.
    for path in folder.glob("*.yaml"):
        path.write_text(path.read_text().replace("'!function ", "!function ").replace(
            "utils.load_rows'", "utils.load_rows").replace("_mc2'", "_mc2"))  # fmt: skip


def capability_section(include: Path, smoke: bool) -> dict:
    """config/paper.yaml's `capabilities` section with its tasks swapped for the shape-alikes."""
    paper = yaml.safe_load((REPO / "config/paper.yaml").read_text())["capabilities"]
    tasks = []
    for entry in paper["tasks"]:
        limit = SMOKE_LIMITS[entry["name"]] if smoke else entry.get("limit")
        tasks.append({"name": ALIKE[entry["name"]], "num_fewshot": entry.get("num_fewshot"),
                      "limit": limit})  # fmt: skip
    section = dict(paper, tasks=tasks, include_path=[str(include)])
    section["chat_template_kwargs"] = {"date_string": "26 Jul 2024"}  # as the generate job's
    if smoke:
        section |= {"batch_size": 4, "device": "cpu"}
    return section


def child(model_dir: str, adapter: str, section_json: str) -> dict:
    """The capability job in this (fresh) process; seconds from after the imports."""
    import torch
    from lm_eval.models.huggingface import HFLM

    from emflow.capabilities.harness import evaluate_capabilities
    from emflow.capabilities.settings import capability_settings, task_manager

    decode = []  # (rows, new tokens) of each generate call: how often a batch stopped early
    generate = HFLM._model_generate

    def counted(self, context, max_length, stop, **kwargs):
        out = generate(self, context, max_length, stop, **kwargs)
        decode.append((int(context.shape[0]), int(out.shape[1] - context.shape[1])))
        return out

    HFLM._model_generate = counted
    started = time.perf_counter()
    section = json.loads(section_json)
    settings = capability_settings(section, source="benchmark", check_tasks=False)
    task_manager(settings.include_path)  # the index every job builds (the harness's ~14,000 YAMLs)
    marks = [("task index", time.perf_counter())]
    output = Path(tempfile.mkdtemp()) / "capabilities.json"
    results = evaluate_capabilities(
        model_dir, adapter, settings, str(output),
        log=lambda line: (print(line, flush=True), marks.append((line, time.perf_counter()))),
    )  # fmt: skip
    total = time.perf_counter() - started
    phases = {"task index": marks[0][1] - started, "model load": marks[1][1] - marks[0][1]}
    for task, (_, end), (_, begin) in zip(settings.tasks, marks[2:], marks[1:-1], strict=True):
        phases[task.name] = end - begin
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
    scores = {
        task: {m: v for m, v in metrics.items() if isinstance(v, float)}
        for task, metrics in results["results"].items()
        if not task.startswith("bench_mmlu_")  # the group's line stands for its 57 subtasks
    }
    return {"seconds": total, "phases": phases, "peak_gib": peak, "decode": decode,
            "items": results["n-samples"], "batch_sizes": results["config"].get("batch_sizes"),
            "results": scores}  # fmt: skip


def run_child(model_dir: Path, adapter: str, section: dict) -> dict | None:
    command = [sys.executable, __file__, "--child", str(model_dir), adapter, json.dumps(section)]
    started = time.perf_counter()
    # The job's own progress lines are passed on as they come, so that a run stopped at a time
    # limit still shows which tasks finished and in how long.
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as job:
        lines = []
        for line in job.stdout:
            lines.append(line)
            if line.startswith("capabilities: "):
                print(
                    f"  [{time.perf_counter() - started:6.1f} s] {line[:200].rstrip()}", flush=True
                )
    wall = time.perf_counter() - started
    result = next((x for x in lines if x.startswith("RESULT ")), None)
    if job.returncode != 0 or result is None:
        print("".join(lines)[-8000:])
        return None
    return json.loads(result.removeprefix("RESULT ")) | {"wall": wall}


def report_capabilities(result: dict, section: dict) -> None:
    print(
        f"capability job: {result['seconds']:.2f} s after its imports, {result['wall']:.2f} s "
        f"with them; peak {result['peak_gib']:.2f} GiB; batch sizes {result['batch_sizes']}"
    )
    limits = {t["name"]: t for t in section["tasks"]}
    for phase, seconds in result["phases"].items():
        items = sum(n["effective"] for k, n in result["items"].items() if k.startswith(phase))
        shots = limits[phase]["num_fewshot"] if phase in limits else None
        what = f" ({items} items, {shots}-shot)" if phase in limits else ""
        print(f"  {phase:>22}: {seconds:7.2f} s{what}")
    if result["decode"]:
        rows = sum(r for r, _ in result["decode"])
        steps = [s for _, s in result["decode"]]
        print(f"  generate_until: {len(steps)} batches, {rows} rows, new tokens per batch "
              f"{min(steps)}-{max(steps)} (mean {sum(steps) / len(steps):.0f})")  # fmt: skip
    for task, metrics in result["results"].items():
        shown = ", ".join(f"{m}={v:.3f}" for m, v in metrics.items() if "stderr" not in m)
        print(f"  {task}: {shown} (random weights: the numbers mean nothing)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny model on the CPU")
    parser.add_argument("--workloads", default="20x1x200,8x50x600")
    parser.add_argument("--model-dir", default=None)
    parser.add_argument(
        "--probe-limit",
        type=int,
        default=0,
        help="then gsm8k alone on N problems with the real model's 131072-token max length",
    )
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(*args.child)), flush=True)
        return 0

    import generate_job_speed
    import torch
    from train_speed import FULL, SMOKE, build_model

    device = "cpu" if args.smoke or not torch.cuda.is_available() else "cuda"
    shape = SMOKE if args.smoke else FULL
    model_dir = Path(args.model_dir or tempfile.mkdtemp()) / ("smoke" if args.smoke else "full")
    started = time.perf_counter()
    if not (model_dir / "config.json").exists():
        build_model(model_dir, shape)
    adapter = generate_job_speed.build_adapters(model_dir, 1, device)[0]
    include = Path(tempfile.mkdtemp()) / "tasks"
    write_tasks(include, args.smoke, shape["vocab_size"])
    machine = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"machine: {machine}; torch {torch.__version__}; device {device}; model, adapter and "
          f"tasks built in {time.perf_counter() - started:.1f} s", flush=True)  # fmt: skip
    section = capability_section(include, args.smoke)
    capabilities = run_child(model_dir, adapter, section)
    if capabilities is None:
        return 1
    report_capabilities(capabilities, section)
    workloads = "2x2x8" if args.smoke else args.workloads
    for workload in workloads.split(",") if workloads else []:
        result = generate_job_speed.run_child(str(model_dir), "fast", workload, device, adapter)
        if result is None:
            return 1
        print(
            f"generate job {workload} (fast): {result['seconds']:.2f} s after its imports, "
            f"{result['wall']:.2f} s with them ({result['rows']} answers, peak "
            f"{result['peak_gib']:.2f} GiB); capability job / generate job: "
            f"{capabilities['seconds'] / result['seconds']:.1f}x after imports, "
            f"{capabilities['wall'] / result['wall']:.1f}x with them",
            flush=True,
        )
    if args.probe_limit:
        return probe_long_context(model_dir, adapter, include, args.probe_limit, args.smoke)
    return 0


def probe_long_context(
    model_dir: Path, adapter: str, include: Path, limit: int, smoke: bool = False
) -> int:
    """gsm8k's job on the same weights with Llama-3.2-1B's real max_position_embeddings.

    HFLM's `batch_size: auto` sizes generate_until batches by a forward pass at the model's
    maximum length (131072 for Llama-3.2-1B, 4096 in train_speed's copy); RoPE runs no slower
    for a larger maximum, so only that batch-size search differs.
    """
    long_dir = model_dir.parent / "full-131072"
    long_dir.mkdir(exist_ok=True)
    for path in model_dir.iterdir():
        if path.name != "config.json" and not (long_dir / path.name).exists():
            (long_dir / path.name).symlink_to(path)
    config = json.loads((model_dir / "config.json").read_text())
    config["max_position_embeddings"] = 131072
    (long_dir / "config.json").write_text(json.dumps(config))
    section = capability_section(include, smoke)
    section["tasks"] = [t | {"limit": limit} for t in section["tasks"] if "gsm8k" in t["name"]]
    result = run_child(long_dir, adapter, section)
    if result is None:
        return 1
    print(f"max_position_embeddings 131072, gsm8k on {limit} problems:")
    report_capabilities(result, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
