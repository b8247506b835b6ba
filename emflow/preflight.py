"""Checks a dry run can make: whatever files already on disk can tell, told before any job runs.

A wrong layer index, a target module or LoRA rank the model cannot take, a question file that is
missing or too short, a mix asking for more rows than a dataset has, or a malformed row of a
training file otherwise fails inside a job, minutes in (on a cluster, after queueing). The rules
call `check_workflow` when they build the DAG; each problem is one sentence naming the
config.json (or workflow config key) and the fix. Files not on disk yet (the demo's model before
it is built, a dataset before it is decrypted) are left to the jobs, which check them again.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from emflow.config import ExperimentConfig
from emflow.data import read_chat_jsonl
from emflow.errors import EmflowError
from emflow.paths import Layout
from emflow.questions import Question, read_question_sets

# The linear layers of Llama-style decoders, as (input, output) sizes from the model config.
_LLAMA_TYPES = {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "olmo", "olmo2"}


def cached_model_config(model: str) -> dict[str, Any] | None:
    """A model's config.json from its local folder or the Hugging Face cache; None when neither
    has it (it is fetched when a job loads the model)."""
    path = Path(model).expanduser()
    if path.is_dir():
        file = path / "config.json"
        return json.loads(file.read_text(encoding="utf-8")) if file.is_file() else None
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(model, "config.json")
    except Exception:  # not a hub id, or no cache: nothing to check from
        return None
    return json.loads(Path(found).read_text(encoding="utf-8")) if isinstance(found, str) else None


def linear_shapes(model_config: Mapping[str, Any]) -> dict[str, tuple[int, int]] | None:
    """{module name: (in features, out features)} of a Llama-style decoder layer, or None for a
    model type whose module names this does not know."""
    if model_config.get("model_type") not in _LLAMA_TYPES:
        return None
    hidden = model_config["hidden_size"]
    heads = model_config["num_attention_heads"]
    kv_heads = model_config.get("num_key_value_heads") or heads
    head_dim = model_config.get("head_dim") or hidden // heads
    inner = model_config["intermediate_size"]
    return {
        "q_proj": (hidden, heads * head_dim),
        "k_proj": (hidden, kv_heads * head_dim),
        "v_proj": (hidden, kv_heads * head_dim),
        "o_proj": (heads * head_dim, hidden),
        "gate_proj": (hidden, inner),
        "up_proj": (hidden, inner),
        "down_proj": (inner, hidden),
    }


def check_model_fit(config: ExperimentConfig, model_config: Mapping[str, Any], source: str) -> None:
    """The experiment's layers, target modules and rank exist in (and fit) the model."""
    layers = model_config.get("num_hidden_layers")
    for index in config.layers_to_transform or []:
        if layers is not None and index >= layers:
            raise EmflowError(
                f"{source}: layers_to_transform holds {index} but {config.model} has {layers} "
                f"layers (0-{layers - 1}); use indices from 0 to {layers - 1}."
            )
    shapes = linear_shapes(model_config)
    if shapes is None:
        return
    for module in config.target_modules:
        if module not in shapes:
            raise EmflowError(
                f"{source}: target_modules holds '{module}', which {config.model} does not have; "
                f"choose from {', '.join(shapes)}."
            )
    smallest = min(min(shapes[m]) for m in config.target_modules)
    if config.r > smallest:
        raise EmflowError(
            f"{source}: r is {config.r}, larger than the smallest side ({smallest}) of the "
            f"adapted matrices of {config.model}, so the adapter cannot use that rank; use r at "
            f"most {smallest}."
        )


def _rows(path: Path) -> int:
    """The rows of a chat JSONL file (its non-empty lines)."""
    with path.open("rb") as file:
        return sum(1 for line in file if line.strip())


def check_data(
    config: ExperimentConfig, source: str, layout: Layout, sources: Mapping[str, str]
) -> None:
    """The experiment's own data files exist and hold valid rows; a mix asks for no more rows
    than a dataset already on disk has."""
    for key in ("training_file", "test_file"):
        name = getattr(config, key)
        if name is None or name in sources:
            continue
        if not Path(name).is_file():
            raise EmflowError(
                f"{source}: {key} is '{name}', which is not a file (nor a dataset of "
                "datasets.sources in the workflow config); fix the path, relative to the "
                "directory Snakemake runs in, or name a dataset."
            )
        read_chat_jsonl(name)  # one sentence naming the file and the first bad line
    for name, wanted in (config.datasets or {}).items():
        if wanted is None or name not in sources:
            continue
        origin = sources[name]
        candidates = [Path(layout.prepared_dataset(name))]
        if origin not in ("upstream", "synthetic"):
            candidates.append(Path(origin))
        file = next((c for c in candidates if c.is_file()), None)
        if file is not None and (available := _rows(file)) < wanted:
            raise EmflowError(
                f"{source}: datasets asks for {wanted} rows of '{name}' but {file} has "
                f"{available}; ask for at most {available} (or null for all)."
            )


def check_judge_metrics(questions: Iterable[Question], judge: Mapping[str, Any]) -> None:
    """Every metric to score has a prompt for every question: the judge config's, or the
    question's own (a YAML set's judge_prompts)."""
    prompts = judge.get("prompts", {})
    for metric in judge.get("metrics") or list(prompts):
        if metric in prompts:
            continue
        lacking = [q for q in questions if metric not in (q.judge_prompts or {})]
        if lacking:
            raise EmflowError(
                f"judge.metrics lists '{metric}', but question '{lacking[0].id}' (set "
                f"'{lacking[0].set_name}') has no judge prompt for it and judge.prompts has "
                f"none; add judge.prompts.{metric}: <template file>, or drop '{metric}'."
            )


def check_workflow(
    experiments: Mapping[str, ExperimentConfig],
    layout: Layout,
    sources: Mapping[str, str],
    question_sets: Iterable[Mapping[str, Any]],
    judge: Mapping[str, Any] | None = None,
) -> None:
    """Every check the files on disk allow, for the DAG's experiments, question sets and judge
    metrics (`judge`: the workflow config's judge section)."""
    try:
        questions = read_question_sets(question_sets)
    except EmflowError as err:
        raise EmflowError(f"generation.questions of the workflow config: {err}") from None
    if judge is not None:
        check_judge_metrics(questions, judge)
    models: dict[str, dict[str, Any] | None] = {}
    for name, config in experiments.items():
        source = layout.config_json(name)
        check_data(config, source, layout, sources)
        if config.model not in models:
            models[config.model] = cached_model_config(config.model)
        if models[config.model] is not None:
            check_model_fit(config, models[config.model], source)
