"""The capabilities stage's jobs (rule capabilities): which targets lm-evaluation-harness runs
on, what each job reads and what decides its results.

Every base model and every run's final adapter is evaluated; with `capabilities.steps` also each
evaluated step of a checkpoint sweep, with `capabilities.scales` each LoRA scale. A job's params
are the tasks and how they are asked, not which targets exist: listing more steps schedules only
the new targets' jobs, and a training or generation change that leaves an adapter as it is reruns
none (the adapter is the job's input, not its params).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from emflow.paths import (
    base_target,
    run_target,
    scale_target,
    step_target,
    target_run_and_step,
    target_scale,
)

if TYPE_CHECKING:
    from emflow.capabilities.settings import CapabilitySettings

# `plan` below is an emflow.workflow.plan.Plan, which calls these functions (so not imported).
Plan = Any

# Keys that choose targets rather than results (see the module's docstring).
TARGET_KEYS = ("steps", "scales")


def capability_targets(plan: Plan, settings: CapabilitySettings) -> list[str]:
    """Every target the stage evaluates, each once (a base model shared by experiments too)."""
    targets = {base_target(c.model): None for c in plan.experiments.values()}
    for run, (experiment, _) in plan.runs.items():
        targets[run_target(run)] = None
        if settings.steps:
            targets |= {step_target(run, s): None for s in plan.sweeps.get(experiment, [])}
        if settings.scales:
            targets |= {scale_target(run, s): None for s in plan.doses.get(experiment, [])}
    return list(targets)


def capability_inputs(plan: Plan, target: str) -> dict[str, Any]:
    """The base model's files, and the adapter a run's target loads (a sweep step's folder of
    saved adapters: the job picks `step-<N>` inside, as generate does)."""
    inputs: dict[str, Any] = {"model": plan.model_inputs(plan.target_model(target))}
    run, step = target_run_and_step(target)
    if step is not None:
        inputs["adapter"] = plan.paths.step_adapters(run)
    elif run is not None:
        inputs["adapter"] = plan.paths.adapter(run)
    return inputs


def capability_params(plan: Plan, section: Mapping[str, Any], target: str) -> dict[str, Any]:
    """What decides a target's results: its model, step or LoRA scale, and the section's task
    settings with the workflow's chat_template_kwargs (the date Llama 3's template writes)."""
    _, step = target_run_and_step(target)
    scaled = target_scale(target)
    settings = {k: v for k, v in section.items() if k not in TARGET_KEYS}
    settings["chat_template_kwargs"] = dict(plan.config["chat_template_kwargs"])
    return {
        "model": plan.target_model(target),
        "step": step,
        "scale": scaled[1] if scaled else None,
        "settings": settings,
    }


def experiment_capabilities(plan: Plan, experiment: str) -> dict[str, Any]:
    """{"base": the base model's capabilities.json, "finetuned": each run's, in seed order}:
    what results.md and the summary compare."""
    runs = plan.experiment_runs(experiment).values()
    return {
        "base": plan.paths.capabilities(base_target(plan.experiments[experiment].model)),
        "finetuned": [plan.paths.capabilities(run_target(run)) for run in runs],
    }
