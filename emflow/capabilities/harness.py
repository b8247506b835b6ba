"""One target's capability check: lm-evaluation-harness's tasks on a base model or a base model
plus a LoRA adapter, written as one results JSON of the harness's own shape.

The model is loaded once (lm_eval's `HFLM`, with `peft=<adapter dir>`, the harness's documented
way to evaluate a LoRA adapter) and every task is a `simple_evaluate` call of its own, because
each task has its own `num_fewshot` and `limit`, which the harness takes per call. Each call
seeds Python, numpy, torch and the few-shot sampler with the harness's default seeds, so a task's
numbers do not depend on which tasks run before it.

A LoRA-scale target (the run's adapter with every LoRA B times `scale`, as the generate stage's
dose-response targets) is loaded through emflow.generate.adapters.AdapterSwitch instead of
`peft=`: the scaled adapter merged into the base weights, the same weights generate answers with.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Mapping
from importlib.metadata import version
from typing import Any

from emflow.atomic import write_text_atomic
from emflow.capabilities.settings import CapabilitySettings, capability_settings, task_manager
from emflow.devices import resolve_device
from emflow.errors import EmflowError
from emflow.generate.adapters import AdapterSwitch

# The per-task tables of the harness's results, merged over the tasks of one target.
MERGED_KEYS = ("results", "groups", "group_subtasks", "configs", "versions", "n-shot",
               "higher_is_better", "n-samples")  # fmt: skip
# The run settings the harness records under "config"; its environment dump (pip list, GPUs,
# host), git hashes and hub lookups are left out of a file that is kept with the results.
CONFIG_KEYS = ("model", "model_num_parameters", "model_dtype", "batch_size", "batch_sizes",
               "device", "bootstrap_iters", "random_seed", "numpy_seed", "torch_seed",
               "fewshot_seed")  # fmt: skip
# Of each logged sample: which item, its answer, the model's per-choice log-likelihoods and the
# item's metrics; the prompts and documents (large, and in the task's dataset) are left out.
SAMPLE_KEYS = ("doc_id", "doc_hash", "prompt_hash", "target", "filtered_resps", "filter")


def evaluate_capabilities(
    model: str,
    adapter: str | None,
    settings: CapabilitySettings,
    output_json: str,
    *,
    scale: float | None = None,
    log: Callable[[str], Any] = print,
) -> dict:
    """Run every task of `settings` on `model` (plus `adapter`, its LoRA B times `scale` when
    given) and write the harness's results, merged over the tasks, to `output_json` atomically.

    Returns what was written: the harness's `results`, `versions`, `n-shot`, `higher_is_better`,
    `n-samples`, `configs` (and `groups`, `group_subtasks`) over all tasks, its per-item
    `samples`, its run `config`, and an `emflow` key naming the target and the task settings.
    """
    if scale is not None and adapter is None:
        raise ValueError("a LoRA scale needs an adapter to scale")
    try:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
    except ModuleNotFoundError:
        raise EmflowError(
            "The capabilities stage needs lm-eval; pip install 'emflow[capabilities]'."
        ) from None

    device = resolve_device(settings.device, "capabilities.device")
    manager = task_manager(settings.include_path)
    target = model if adapter is None else f"{model} + {adapter}"
    if scale is not None:
        target += f" (LoRA B times {scale:g})"
    started = time.perf_counter()
    lm = HFLM(
        pretrained=model,
        peft=adapter if scale is None else None,
        device=device,
        dtype=settings.dtype,
        batch_size=settings.batch_size,
        chat_template_args=dict(settings.chat_template_kwargs),
    )
    log(f"capabilities: loaded {target} on {device} in {time.perf_counter() - started:.1f}s")
    runs = []
    with contextlib.ExitStack() as stack:
        if scale is not None:
            # reusable=False: no copy of the base weights; this job evaluates one target only.
            switch = AdapterSwitch(lm._model, reusable=False)
            stack.enter_context(switch.merged_into(adapter, float(scale)))
        for task in settings.tasks:
            started = time.perf_counter()
            run = simple_evaluate(
                model=lm,
                tasks=[task.name],
                num_fewshot=task.num_fewshot,
                limit=task.limit,
                apply_chat_template=settings.apply_chat_template,
                fewshot_as_multiturn=settings.fewshot_as_multiturn,
                task_manager=manager,
                log_samples=True,
            )
            runs.append(run)
            scores = ", ".join(
                f"{name} {_metric_line(metrics)}" for name, metrics in run["results"].items()
            )
            log(f"capabilities: {task.name} in {time.perf_counter() - started:.1f}s: {scores}")
    results = merged_results(runs)
    # simple_evaluate records its own batch_size and device arguments, None for a loaded model.
    results["config"] |= {"batch_size": settings.batch_size, "device": device}
    results["emflow"] = {
        "model": model,
        "adapter": adapter,
        "scale": scale,
        "tasks": settings.task_settings(),
        "apply_chat_template": settings.apply_chat_template,
        "fewshot_as_multiturn": settings.fewshot_as_multiturn,
        "chat_template_kwargs": dict(settings.chat_template_kwargs),
        "lm_eval_version": version("lm_eval"),
    }
    # Serialise before touching the output, so that a value json cannot take fails the job
    # without leaving a file behind; default=str keeps dtypes and paths readable.
    text = json.dumps(results, indent=2, default=str, ensure_ascii=False) + "\n"
    write_text_atomic(output_json, text)
    return json.loads(text)


def evaluate_target(
    params: Mapping[str, Any],
    *,
    adapter: str | None,
    output_json: str,
    log: Callable[[str], Any] = print,
) -> dict:
    """The capabilities rule: one target from its params (emflow.workflow.capability_plan:
    model, step, scale, settings); a sweep step's adapter is `step-<N>` inside `adapter`."""
    settings = capability_settings(params["settings"], source="capabilities", check_tasks=False)
    if params.get("step") is not None:
        adapter = os.path.join(adapter, f"step-{params['step']}")
    return evaluate_capabilities(
        params["model"], adapter, settings, output_json, scale=params.get("scale"), log=log
    )


def merged_results(runs: list[dict]) -> dict:
    """The harness's results of several `simple_evaluate` calls (one task each) as one."""
    merged: dict[str, Any] = {key: {} for key in MERGED_KEYS}
    merged["samples"] = {}
    for run in runs:
        for key in MERGED_KEYS:
            merged[key].update(run.get(key, {}))
        for task, samples in run.get("samples", {}).items():
            merged["samples"][task] = [_sample(s) for s in samples]
    if not merged["groups"]:
        del merged["groups"]
    config = runs[0].get("config", {}) if runs else {}
    merged["config"] = {key: config[key] for key in CONFIG_KEYS if key in config}
    merged["lm_eval_version"] = runs[0].get("lm_eval_version") if runs else None
    merged["transformers_version"] = runs[0].get("transformers_version") if runs else None
    merged["date"] = runs[0].get("date") if runs else None
    return merged


def _sample(sample: dict) -> dict:
    """A logged sample without its prompt and document: the keys above plus its metrics."""
    kept = {key: sample[key] for key in SAMPLE_KEYS if key in sample}
    kept.update({metric: sample[metric] for metric in sample.get("metrics", [])})
    return kept


def _metric_line(metrics: dict) -> str:
    parts = []
    for key, value in metrics.items():
        # Metric keys read "<metric>,<filter>"; "alias", "name" and "sample_len" are not metrics.
        if "," not in key or "_stderr," in key or not isinstance(value, int | float):
            continue
        stderr = metrics.get(key.replace(",", "_stderr,", 1))
        parts.append(
            f"{key.split(',')[0]}={value:.4f}"
            + (f"±{stderr:.4f}" if isinstance(stderr, float) else "")
        )
    return " ".join(parts)
