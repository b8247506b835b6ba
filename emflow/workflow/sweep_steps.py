"""Which saved steps of a run's checkpoint sweep are planned as targets, before any job runs.

A sweep's steps are known before training where the config or the data on disk fixes the run's
optimizer steps; emflow.workflow.plan makes each evaluated step a target.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from emflow.config import ExperimentConfig
from emflow.errors import EmflowError
from emflow.train.examples import optimizer_steps, trained_rows
from emflow.train.settings import TrainSettings
from emflow.workflow.preflight import answer_loss


def _count_lines(path: Path) -> int:
    with path.open(encoding="utf-8-sig") as file:
        return sum(1 for line in file if line.strip())


def planned_optimizer_steps(
    config: ExperimentConfig,
    training_file: str | None,
    settings: Mapping[str, Any] | None = None,
) -> int | None:
    """The run's number of optimizer steps, where the config or the data on disk fixes it:
    `max_steps`; else the rows (a mix's declared counts, or the training file's lines) after
    the held-out split, as `emflow.train.examples` computes them. None when unknown before training.

    Where the training file and the model's tokenizer are on disk, the rows that lose their
    whole answer at max_seq_length are left out as the train job leaves them out (`settings`:
    the train section with chat_template_kwargs, as the train rule's params carry it); with
    `seeds`, the fewest steps of any seed's run."""
    if config.max_steps:
        return config.max_steps
    counts = list((config.datasets or {}).values())
    on_disk = training_file is not None and Path(training_file).is_file()
    if counts and all(c is not None for c in counts):
        rows = sum(counts)
    elif on_disk:
        rows = _count_lines(Path(training_file))
    else:
        return None
    lost: tuple[int, ...] = ()
    if on_disk:
        loss = answer_loss(config, training_file, TrainSettings.from_config(dict(settings or {})))
        lost = loss.lost if loss is not None else ()
    return min(
        optimizer_steps(config, trained_rows(config, rows, lost, seed))
        for seed in config.training_seeds
    )


def eval_steps(config: ExperimentConfig, total_steps: int | None, source: str) -> list[int]:
    """The saved steps to generate and judge (`eval_checkpoints`); [] without a sweep. Where the
    step count is known, `adapter_checkpoints` must save within it."""
    if total_steps is not None:
        config.check_saved_steps(total_steps, source)
    wanted = config.eval_checkpoints
    if wanted is None:
        return []
    if isinstance(wanted, list):
        steps = sorted(set(wanted))
        if total_steps is not None and steps[-1] > total_steps:
            raise EmflowError(
                f"{source}: eval_checkpoints lists step {steps[-1]}, but the run has "
                f"{total_steps} optimizer steps; list steps up to {total_steps}."
            )
        return steps
    if isinstance(config.adapter_checkpoints, list):
        return sorted(
            s for s in set(config.adapter_checkpoints) if total_steps is None or s <= total_steps
        )
    if total_steps is None:
        raise EmflowError(
            f"{source}: eval_checkpoints is 'all' with adapter_checkpoints every "
            f"{config.adapter_checkpoints} steps, but the number of optimizer steps is not "
            "known before training (set max_steps, give the mix's row counts, or list the "
            "steps to evaluate)."
        )
    return config.checkpoint_steps(total_steps)
