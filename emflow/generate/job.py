"""Generation: a model (base, or base + LoRA adapter) answers the question sets into a CSV.

The CSV keeps the homework's columns, `id,question,response`, which its grader checks (`question`
is the user turn the model saw, which the judge also sees), and adds after them what groups the
answers: the question's id and set, the paraphrase and sample index, the system prompt, and the
run's training prompt where a set asks for it (`training_prompt: true`, emflow.questions): then
`system` holds it under placement system, and under a user-turn placement the model saw it
beside `question`, which stays the question as asked, so that the judge scores the question.
Which backend answers (emflow.generate.registry) is `generation.backend`.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from emflow import devices
from emflow.atomic import atomic_path
from emflow.errors import EmflowError
from emflow.generate.backend import GenerationOutput, Job
from emflow.generate.registry import REGISTRY
from emflow.generate.settings import (
    BACKENDS,
    PROMPT_FORMATS,
    GenerationSettings,
    served_model_name,
)
from emflow.inoculation import Inoculation
from emflow.questions import Question, read_question_sets, with_training_prompt

__all__ = [
    "GenerationOutput",
    "generate_for_adapters",
    "generate_job",
    "generate_scales_job",
    "generate_sweep_job",
]

GENERATION_COLUMNS = [
    "id",
    "question",
    "response",
    "question_id",
    "question_set",
    "paraphrase",
    "sample",
    "system",
]
# Written only where some answer was given a run's training prompt, so that every other CSV
# keeps the columns it always had.
TRAINING_PROMPT_COLUMN = "training_prompt"


def backend_name(settings: GenerationSettings) -> str:
    """The backend that answers: `generation.backend`, with "auto" resolved on the device
    (emflow's own decode loop on a GPU, transformers' generate on a CPU)."""
    # An unknown name fails here, before anything loads.
    name = devices.resolve_backend(settings.backend, "cpu", BACKENDS, "generation.backend")
    if settings.backend != "auto":
        return name
    device = devices.resolve_device(settings.device, "generation.device")
    return devices.resolve_backend("auto", device, BACKENDS, "generation.backend")


def generate_for_adapters(
    model_name: str,
    questions: list[Question],
    outputs: Sequence[GenerationOutput],
    *,
    settings: GenerationSettings | None = None,
) -> list[int]:
    """Answer every question its `samples` times once per output, each CSV written atomically;
    a local backend loads the base model once and merges each adapter in turn
    (emflow.generate.adapters). Each CSV equals what a call for that output alone writes;
    returns the number of answers in each. `settings`: the defaults if None."""
    settings = settings or GenerationSettings()
    if not questions:
        raise EmflowError("the question set is empty; add questions to generation.questions.")
    if settings.prompt_format not in PROMPT_FORMATS:
        raise EmflowError(
            f"generation.prompt_format is '{settings.prompt_format}'; use one of "
            f"{', '.join(PROMPT_FORMATS)}."
        )
    name = backend_name(settings)
    if name == "openai" and any(o.lora_scale != 1.0 for o in outputs):
        raise EmflowError(
            "eval_lora_scales needs a local generation backend (a served model cannot be "
            "rescaled); set generation.backend to fast or hf, or remove eval_lora_scales."
        )
    backend = REGISTRY[name](model_name, settings)
    jobs: list[Job] = [(q, k) for q in questions for k in range(q.samples)]
    counts = []
    # The backend answers the next output only after this one's CSV is written.
    for output, responses in zip(outputs, backend.answer(jobs, outputs), strict=True):
        _write_generations(output.csv, jobs, responses)
        counts.append(len(responses))
    return counts


def _write_generations(output_csv, jobs: list[Job], responses: list[str]) -> None:
    with atomic_path(output_csv) as tmp:
        with tmp.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            prompted = any(q.training_prompt is not None for q, _ in jobs)
            writer.writerow(GENERATION_COLUMNS + [TRAINING_PROMPT_COLUMN] * prompted)
            for (q, k), response in zip(jobs, responses, strict=True):
                row = [q.row_id(k), q.text, response, q.id, q.set_name, q.paraphrase, k]
                row.append(q.system_turn)
                writer.writerow(row + [q.training_prompt] * prompted)


def generate_job(
    model_name: str,
    run: str | None,
    section: Mapping[str, Any],
    output_csv: str | Path,
    adapter_dir: str | Path | None = None,
    *,
    step: int | None = None,
    samples: int | None = None,
    served_model: str | None = None,
    lora_scale: float | None = None,
) -> int:
    """The generate rule's job: `section` holds the `generation` settings and `questions` (with
    chat_template_kwargs); `run` names the fine-tuned run (None: the base model). For a
    checkpoint of a sweep, `adapter_dir` holds the run's saved steps and `step` picks one;
    `samples` (generation.sweep_samples) then replaces every question's sample count.
    `served_model`: the name the openai backend asks for, as the rule's params carry it (None:
    from `section`'s openai_model and openai_base_model). `lora_scale`: the run's adapter with
    its LoRA B matrices times this (a dose-response target; None: as trained)."""
    if step is None:
        settings, questions = _job_inputs(section, samples)
        served = served_model or served_model_name(settings, model_name, run)
        scale = 1.0 if lora_scale is None else float(lora_scale)
        output = GenerationOutput(output_csv, adapter_dir, served, scale)
        return generate_for_adapters(model_name, questions, [output], settings=settings)[0]
    return generate_sweep_job(
        model_name,
        run,
        section,
        {step: output_csv},
        adapter_dir,
        samples=samples,
        served_models=None if served_model is None else [served_model],
    )[0]


def generate_sweep_job(
    model_name: str,
    run: str,
    section: Mapping[str, Any],
    outputs: dict[int, str | Path],
    step_adapters: str | Path,
    *,
    samples: int | None = None,
    served_models: Sequence[str] | None = None,
) -> list[int]:
    """Answer for each saved step of a run's sweep (`outputs`: step -> CSV) in one process:
    the base model loads once; each step's adapter is `<step_adapters>/step-<N>`.
    `served_models`: each step's name for the openai backend, in the order of `outputs` (None:
    from `section`)."""
    settings, questions = _job_inputs(section, samples)
    missing = [s for s in outputs if not (Path(step_adapters) / f"step-{s}").is_dir()]
    if missing:
        have = sorted(p.name for p in Path(step_adapters).glob("step-*"))
        raise EmflowError(
            f"{step_adapters}: run '{run}' saved no adapter after step {missing[0]} (it has "
            f"{', '.join(have) or 'none'}); evaluate saved steps only (eval_checkpoints)."
        )
    if served_models is None:
        # A checkpoint is served under its target's name: "<run>/step-<N>".
        served_models = [
            served_model_name(settings, model_name, f"{run}/step-{s}") for s in outputs
        ]
    jobs = [
        GenerationOutput(csv, Path(step_adapters) / f"step-{step}", served)
        for (step, csv), served in zip(outputs.items(), served_models, strict=True)
    ]
    return generate_for_adapters(model_name, questions, jobs, settings=settings)


def generate_scales_job(
    model_name: str,
    section: Mapping[str, Any],
    outputs: Mapping[float, str | Path],
    adapter_dir: str | Path,
) -> list[int]:
    """Answer for each dose of one run's adapter (`outputs`: scale -> CSV) with one model load:
    the base loads once and the adapter is merged at each scale in turn. Each CSV equals what
    generate_job with that `lora_scale` alone writes."""
    settings, questions = _job_inputs(section, None)
    jobs = [GenerationOutput(csv, adapter_dir, lora_scale=float(s)) for s, csv in outputs.items()]
    return generate_for_adapters(model_name, questions, jobs, settings=settings)


def _job_inputs(section: Mapping[str, Any], samples: int | None):
    settings = GenerationSettings.from_config(section)
    questions = read_question_sets(
        section["questions"], samples_per_question=settings.samples_per_question
    )
    if samples is not None:
        questions = [replace(q, samples=samples) for q in questions]
    # The run's training instruction, as emflow.workflow.plan.generation_params adds it for a
    # run trained under one when some set has `training_prompt: true`.
    if (instruction := section.get("training_prompt")) is not None:
        questions = with_training_prompt(questions, Inoculation(**instruction), settings.seed)
    return settings, questions
