"""The capabilities stage's settings: the workflow config's `capabilities` section.

An absent or null section turns the stage off. Every error a user can cause here is one sentence
naming the key (`capabilities.tasks[1].limit`) and the fix.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emflow.devices import DEVICES
from emflow.errors import EmflowError

# dtype names HFLM hands to transformers' from_pretrained ("auto": the checkpoint's own).
DTYPES = ("auto", "float32", "bfloat16", "float16")
TASK_KEYS = ("name", "num_fewshot", "limit")
INSTALL_HINT = "pip install 'emflow[capabilities]' (lm-eval==0.4.13)"


@dataclass(frozen=True)
class CapabilityTask:
    """One lm-evaluation-harness task (or group), with its few-shot count and item limit."""

    name: str
    # None: the task's own default (0 where its YAML names none), as the harness does.
    num_fewshot: int | None = None
    # None: every item; an integer: the first N items; a float below 1: that fraction of them.
    limit: int | float | None = None


@dataclass(frozen=True)
class CapabilitySettings:
    """How lm-evaluation-harness runs on each target (field names follow lm_eval's own)."""

    tasks: tuple[CapabilityTask, ...]
    # Folders of extra task YAMLs (the harness's --include_path); emflow ships emflow_mc there.
    include_path: tuple[str, ...] = ("config/capabilities",)
    batch_size: int | str = 8  # or "auto": the harness finds the largest that fits
    device: str = field(default="auto", metadata={"choices": DEVICES})
    dtype: str = field(default="auto", metadata={"choices": DTYPES})
    # The chat models of the EM papers are asked through their chat template, as they are used.
    apply_chat_template: bool = True
    fewshot_as_multiturn: bool = False
    # Template variables (the workflow config's top-level `chat_template_kwargs`, which the rules
    # add to this section as they do for generate): Llama 3's template writes today's date into
    # every prompt unless `date_string` pins it.
    chat_template_kwargs: Mapping[str, Any] = field(default_factory=dict)
    steps: bool = False  # also each checkpoint of a sweep
    scales: bool = False  # also each LoRA scale of a dose-response run

    def task_settings(self) -> list[dict[str, Any]]:
        """The tasks as plain dicts (for a results file or a rule's params)."""
        return [
            {"name": t.name, "num_fewshot": t.num_fewshot, "limit": t.limit} for t in self.tasks
        ]


_KEYS = tuple(CapabilitySettings.__dataclass_fields__)


def capability_settings(
    section: Mapping[str, Any] | None, *, source: str, check_tasks: bool = True
) -> CapabilitySettings | None:
    """The `capabilities` section of the workflow config `source` as settings (None: off).

    With `check_tasks`, each include_path folder must exist and each task name must be one that
    lm_eval's TaskManager finds (its own tasks plus those folders).
    """
    if section is None:
        return None
    if not isinstance(section, Mapping):
        raise EmflowError(
            f"{source}: capabilities is {section!r}; make it a mapping with a `tasks` list, "
            "or null to turn the capability checks off."
        )
    for key in section:
        if key not in _KEYS:
            raise EmflowError(f"{source}: unknown key 'capabilities.{key}' ({_hint(key, _KEYS)}).")
    defaults = CapabilitySettings(tasks=())
    tasks = _tasks(section.get("tasks"), source)
    include_path = section.get("include_path", list(defaults.include_path))
    if not isinstance(include_path, list) or not all(
        isinstance(p, str) and p for p in include_path
    ):
        raise EmflowError(
            f"{source}: capabilities.include_path is {include_path!r}; "
            "make it a list of folders of task YAML files."
        )
    batch_size = section.get("batch_size", defaults.batch_size)
    if not (batch_size == "auto" or (_is_int(batch_size) and batch_size >= 1)):
        raise EmflowError(
            f"{source}: capabilities.batch_size is {batch_size!r}; "
            "use a positive integer or 'auto'."
        )
    for key, choices in (("device", DEVICES), ("dtype", DTYPES)):
        value = section.get(key, getattr(defaults, key))
        if value not in choices:
            raise EmflowError(
                f"{source}: capabilities.{key} is {value!r}; use one of {', '.join(choices)}."
            )
    flags = {}
    for key in ("apply_chat_template", "fewshot_as_multiturn", "steps", "scales"):
        flags[key] = section.get(key, getattr(defaults, key))
        if not isinstance(flags[key], bool):
            raise EmflowError(f"{source}: capabilities.{key} is {flags[key]!r}; use true or false.")
    if flags["fewshot_as_multiturn"] and not flags["apply_chat_template"]:
        raise EmflowError(
            f"{source}: capabilities.fewshot_as_multiturn needs the chat template; "
            "set capabilities.apply_chat_template to true or fewshot_as_multiturn to false."
        )
    chat_template_kwargs = section.get("chat_template_kwargs", {})
    if not isinstance(chat_template_kwargs, Mapping):
        raise EmflowError(
            f"{source}: chat_template_kwargs is {chat_template_kwargs!r}; make it a mapping of "
            "template variables such as {date_string: 26 Jul 2024}."
        )
    settings = CapabilitySettings(
        tasks=tasks,
        include_path=tuple(include_path),
        batch_size=batch_size,
        device=section.get("device", defaults.device),
        dtype=section.get("dtype", defaults.dtype),
        chat_template_kwargs=dict(chat_template_kwargs),
        **flags,
    )
    if check_tasks:
        check_task_names(settings, source)
    return settings


def check_task_names(settings: CapabilitySettings, source: str) -> None:
    """Fail with one sentence when an include_path folder is missing or lm_eval knows no task of
    a configured name."""
    for i, folder in enumerate(settings.include_path):
        if not Path(folder).is_dir():
            raise EmflowError(
                f"{source}: capabilities.include_path[{i}] '{folder}' is not a folder "
                f"(from {Path.cwd()}); give a folder of task YAML files or leave it out."
            )
    # The include_path folders alone first: indexing them takes milliseconds, the harness's own
    # tasks seconds, so a config of emflow's own tasks (the demo's) plans at once.
    known = _task_manager(_resolved(settings.include_path), include_defaults=False).all_tasks
    if any(task.name not in known for task in settings.tasks):
        known = task_manager(settings.include_path).all_tasks
    for i, task in enumerate(settings.tasks):
        if task.name not in known:
            raise EmflowError(
                f"{source}: capabilities.tasks[{i}].name '{task.name}' is not a task, group or "
                f"tag lm_eval knows ({_hint(task.name, known, listing=False)}); "
                "see `lm_eval ls tasks`, or add its YAML under capabilities.include_path."
            )


@functools.cache
def _task_manager(include_path: tuple[str, ...], include_defaults: bool = True):
    try:
        from lm_eval.tasks import TaskManager
    except ModuleNotFoundError:
        raise EmflowError(f"The capabilities stage needs lm-eval; {INSTALL_HINT}.") from None
    return TaskManager(include_path=list(include_path), include_defaults=include_defaults)


def _resolved(include_path: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(str(Path(p).resolve()) for p in include_path)


def task_manager(include_path: tuple[str, ...]):
    """lm_eval's TaskManager over its own tasks and the `include_path` folders, built once per
    process (indexing the harness's ~15,000 task YAMLs takes seconds)."""
    return _task_manager(_resolved(include_path))


def _tasks(tasks: Any, source: str) -> tuple[CapabilityTask, ...]:
    if not isinstance(tasks, list) or not tasks:
        raise EmflowError(
            f"{source}: capabilities.tasks is {tasks!r}; give a list of tasks such as "
            "[{name: emflow_mc, num_fewshot: 0, limit: null}], or set capabilities to null."
        )
    parsed = []
    for i, task in enumerate(tasks):
        key = f"capabilities.tasks[{i}]"
        if not isinstance(task, Mapping):
            raise EmflowError(
                f"{source}: {key} is {task!r}; write it as a mapping such as "
                "{name: mmlu, num_fewshot: 0, limit: 100}."
            )
        for name in task:
            if name not in TASK_KEYS:
                raise EmflowError(
                    f"{source}: unknown key '{key}.{name}' ({_hint(name, TASK_KEYS)})."
                )
        name = task.get("name")
        if not isinstance(name, str) or not name.strip():
            raise EmflowError(f"{source}: {key}.name is {name!r}; name an lm_eval task.")
        if name in (t.name for t in parsed):
            raise EmflowError(
                f"{source}: {key}.name '{name}' is listed twice; keep one entry per task."
            )
        shots = task.get("num_fewshot")
        if shots is not None and not (_is_int(shots) and shots >= 0):
            raise EmflowError(
                f"{source}: {key}.num_fewshot is {shots!r}; use a whole number of examples "
                "(0 or more) or null for the task's own default."
            )
        limit = task.get("limit")
        if limit is not None and not (
            (_is_int(limit) and limit >= 1) or (isinstance(limit, float) and 0 < limit < 1)
        ):
            raise EmflowError(
                f"{source}: {key}.limit is {limit!r}; use a count of items (1 or more), "
                "a fraction between 0 and 1, or null for every item."
            )
        parsed.append(CapabilityTask(name=name, num_fewshot=shots, limit=limit))
    return tuple(parsed)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _hint(name: str, known, *, listing: bool = True) -> str:
    guess = difflib.get_close_matches(name, list(known), n=1)
    if guess:
        return f"did you mean '{guess[0]}'?"
    return f"known keys: {', '.join(known)}" if listing else "no close name"
