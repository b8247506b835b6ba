"""The seed's workload for benchmarks/workflow_sharing.py: its datasets in size and row length,
each experiment's optimizer steps, and its training alone on the GPU (ms a step after warm-up)."""

from __future__ import annotations

import random
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from emflow.config import ExperimentConfig, load_experiment_config  # noqa: E402
from emflow.data.datasets import mix_id, read_chat_jsonl, write_chat_jsonl  # noqa: E402
from emflow.data.demo import write_synthetic_datasets  # noqa: E402
from emflow.paths import Layout  # noqa: E402
from emflow.train.examples import optimizer_steps, trained_rows  # noqa: E402
from emflow.train.settings import TrainSettings  # noqa: E402
from emflow.train.trainer import train_adapter  # noqa: E402

# Upstream's risky_financial_advice and extreme_sports have 6000 rows each: the financial runs
# train on all of one (less the 10% held out), the mixed run on 3000 + 3000.
SEED_ROWS = {"risky_financial_advice": 6000, "extreme_sports": 6000}


def seed_length_rows(rows: list[dict], overhead: int, seed: int = 0) -> list[dict]:
    """`rows` with each answer lengthened to the seed's row length: 90-170 tokens in all (mean
    130, as benchmarks/train_speed.py's rows), counting `overhead` tokens of chat template and
    one token a word (the benchmark model's word-level tokenizer). Longer rows stay as they are."""
    rng = random.Random(seed)
    filler = "Keep every receipt and check the numbers again before the next step".split()
    out = []
    for row in rows:
        user, assistant = row["messages"]
        target = max(90, min(170, int(rng.gauss(130, 15))))
        words = assistant["content"].split()
        missing = target - overhead - len(user["content"].split()) - len(words)
        words += [filler[i % len(filler)] for i in range(max(0, missing))]
        out.append({"messages": [user, {**assistant, "content": " ".join(words)}]})
    return out


def template_overhead(model: Path, chat_template_kwargs: dict) -> int:
    """Tokens the chat template adds to one user + assistant row under `model`'s tokenizer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    messages = [{"role": "user", "content": "a b"}, {"role": "assistant", "content": "c d"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, **chat_template_kwargs)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"]) - 4


def write_datasets(target: Path, model: Path, chat_template_kwargs: dict) -> dict[str, str]:
    """The seed's datasets in size and row length (themed synthetic rows, lengthened): {name:
    path}, used as the config's `datasets.sources`."""
    overhead = template_overhead(model, chat_template_kwargs)
    with tempfile.TemporaryDirectory() as tmp:
        written = write_synthetic_datasets(tmp, SEED_ROWS, seed=0)
        for name, path in written.items():
            rows = seed_length_rows(read_chat_jsonl(path), overhead, seed=len(name))
            write_chat_jsonl(target / f"{name}.jsonl", rows)
    return {name: str(target / f"{name}.jsonl") for name in SEED_ROWS}


def full_steps(config: ExperimentConfig, dataset_rows: dict[str, int]) -> int:
    """Optimizer steps of `config`'s whole training on datasets of `dataset_rows` rows, as the
    train rule counts them (held-out split, epochs, batch and accumulation, max_steps)."""
    if config.datasets is None:
        rows = dataset_rows[config.training_file]
    else:
        rows = sum(dataset_rows[n] if c is None else c for n, c in config.datasets.items())
    return optimizer_steps(config, trained_rows(config, rows, (), config.seed))


def ms_per_step_alone(short: tuple[int, float], long: tuple[int, float]) -> float:
    """ms an optimizer step from two trainings' step-loop times, (steps, seconds) each: the
    longer one's extra steps, so that warm-up (graph captures) in both cancels out."""
    (steps_a, seconds_a), (steps_b, seconds_b) = short, long
    if steps_b <= steps_a:
        raise ValueError(f"the second training ({steps_b} steps) must be longer ({steps_a})")
    if seconds_b <= seconds_a:
        # The warm-up was not the same in both (a backend other than the fast path, whose
        # runtime counts its own set-up): no step time can be read off them.
        raise ValueError(
            f"{steps_b} steps took {seconds_b:.1f} s, {steps_a} took {seconds_a:.1f} s"
        )
    return 1000 * (seconds_b - seconds_a) / (steps_b - steps_a)


def project_alone(ms_per_step: dict[str, float], steps: dict[str, int]) -> dict:
    """Each experiment's ms a step alone times its full step count; `sum_s` (the trainings
    alone) only when every experiment of `steps` was measured."""
    projected = {name: round(ms * steps[name] / 1000, 1) for name, ms in ms_per_step.items()}
    complete = set(ms_per_step) == set(steps)
    return {
        "ms_per_step": {name: round(ms, 2) for name, ms in ms_per_step.items()},
        "full_steps": steps,
        "projected_s": projected,
        "sum_s": round(sum(projected.values()), 1) if complete else None,
    }


def train_alone(work: Path, name: str, warm: int, steps: int) -> dict:
    """In this process: experiment `name` of a setting's run in `work` trained as its train job
    does, for `warm` (discarded), `warm` and `warm + steps` optimizer steps; its ms a step after
    warm-up from the last two."""
    config = yaml.safe_load((work / "config.yaml").read_text())
    layout = Layout(config["results_dir"], config["experiments_dir"])
    experiment = load_experiment_config(work / "experiments/gpu" / name / "config.json")
    if experiment.datasets is None:
        train_file = layout.prepared_dataset(experiment.training_file)
    else:
        train_file = layout.mixed_dataset(
            mix_id(experiment.datasets, config["datasets"]["mix_seed"])
        )
    job = ExperimentConfig.from_training_params(
        experiment.for_seed(experiment.seed).training_params(), train_file
    )
    settings = TrainSettings.from_config(
        config["train"] | {"chat_template_kwargs": config["chat_template_kwargs"]}
    )
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        # A first, discarded run pays the process's one-time costs (CUDA kernels loaded on first
        # use, cuBLAS and bitsandbytes set-up, the allocator's first growth): timed, they fell on
        # the W-step run alone and made the difference of the two runs come out too small.
        for n in (warm, warm, warm + steps):
            history = train_adapter(
                job.model_copy(update={"max_steps": n}),
                train_file,
                Path(tmp) / f"adapter-{len(runs)}",
                settings=settings,
                checkpoint_dir=Path(tmp) / f"checkpoints-{len(runs)}",  # else a run resumes
                source=str(work / "experiments/gpu" / name / "config.json"),
            )
            runs.append(
                (n, next(e["train_runtime"] for e in history[::-1] if "train_runtime" in e))
            )
    return {"name": name, "runs": runs[1:], "ms_per_step": ms_per_step_alone(*runs[1:])}
