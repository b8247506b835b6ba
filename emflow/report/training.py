"""What training left behind, as numbers: log histories, and a checkpoint sweep's table.

An experiment with `adapter_checkpoints` keeps its adapter after chosen optimizer steps;
`eval_checkpoints` picks which of those become targets (`runs/<run>/step-<N>`), generated and
judged like any run (planned by `emflow.workflow.plan`). `sweep_table` reads what they produced
(scores, the training loss at each step, the LoRA update's norm) into one table per experiment;
`first_em_step` finds the first step whose EM rate is outside the base model's noise. The Model
Organisms for EM paper's phase-transition study (`em_organism_dir/phase_transitions/`) tracks
the same things.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from emflow.errors import EmflowError
from emflow.report.analysis import Analysis, load_run
from emflow.report.metrics import DEFAULT_METRICS, MetricSet


def read_log_history(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a training run's log_history.json (the Trainer's `state.log_history`, a JSON list)."""
    path = Path(path)
    fix = "it should be the JSON list of log entries that the train rule writes; rerun the training"
    try:
        history = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EmflowError(f"{path}: no such file; {fix}.") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise EmflowError(f"{path}: not valid JSON ({err}); {fix}.") from None
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        raise EmflowError(f"{path}: not a list of log entries; {fix}.")
    return history


def read_log_histories(
    paths: Mapping[str, str | os.PathLike | Mapping[int, str | os.PathLike]],
) -> dict[str, Any]:
    """Read the log histories of several runs for `plot_training_curves`.

    `paths` maps a run's name to its log_history.json, or, for a run with replicates, to
    {training seed: log_history.json}. Missing files (a run trained elsewhere) are left out.
    """
    histories: dict[str, Any] = {}
    for name, path in paths.items():
        if isinstance(path, Mapping):
            seeds = {
                f"seed {seed}": read_log_history(p) for seed, p in path.items() if Path(p).exists()
            }
            if seeds:
                histories[name] = seeds
        elif Path(path).exists():
            histories[name] = read_log_history(path)
    return histories


# ---------------------------------------------------------------------------------------------
# Checkpoint sweeps


def sweep_columns(metrics: MetricSet = DEFAULT_METRICS) -> list[str]:
    """The sweep table's columns: one row per (seed, step), each shown metric with its CI, the
    loss and the LoRA norm."""
    scores = [f"{m.name}{end}" for m in metrics.shown for end in ("", "_ci_low", "_ci_high")]
    return ["seed", "step", "n_answers", *scores, "train_loss", "lora_norm"]


def lora_norm(adapter_dir: str | os.PathLike) -> float:
    """The norm of the adapter's weight update: sqrt(sum over adapted modules of
    ||scaling * B A||_F^2), the quantity the Model Organisms phase-transition study tracks per
    module, summed in squares over modules.

    ||B A||_F^2 = trace((B^T B)(A A^T)), computed with r x r matrices, never the full update.
    """
    from safetensors.numpy import load_file

    folder = Path(adapter_dir)
    config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    r, alpha = config["r"], config["lora_alpha"]
    scaling = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    weights = load_file(folder / "adapter_model.safetensors")
    total = 0.0
    for name, a in weights.items():
        if ".lora_A." not in name:
            continue
        b = weights[name.replace(".lora_A.", ".lora_B.")].astype(np.float64)
        a = a.astype(np.float64)
        total += float(np.trace((b.T @ b) @ (a @ a.T))) * scaling**2
    return math.sqrt(max(total, 0.0))


def loss_at(history: Sequence[Mapping[str, Any]], step: int) -> float:
    """The logged training loss of the last logged step at or before `step` (NaN if none)."""
    losses = [(e["step"], e["loss"]) for e in history if "loss" in e and e["step"] <= step]
    return float(losses[-1][1]) if losses else float("nan")


def early_stop_line(histories: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    """One line for results.md saying which runs stopped early, when and why ("" if none did).

    `histories` maps a run's label (e.g. "seed 3407") to its log history; emflow.train's
    early stop leaves an entry with `early_stop`, `reason`, `step` and `planned_steps`.
    """
    stops = []
    for label, history in histories.items():
        entry = next((e for e in history if "early_stop" in e), None)
        if entry is not None:
            who = f"{label}: " if len(histories) > 1 else ""
            stops.append(
                f"{who}at optimizer step {entry['step']} of {entry['planned_steps']} "
                f"({entry['reason']})"
            )
    if not stops:
        return ""
    return "**Training stopped early**, " + "; ".join(stops) + "; the adapter is that step's."


@dataclass(frozen=True)
class SweepPoint:
    """What one step's target of one run's sweep produced."""

    seed: int
    step: int
    judged: str
    step_adapter: str
    log_history: str


def sweep_table(points: Sequence[SweepPoint], analysis: Analysis) -> pd.DataFrame:
    """One row per (seed, step) with `sweep_columns`, steps ascending."""
    rows = []
    histories: dict[str, list] = {}
    for point in sorted(points, key=lambda p: (p.seed, p.step)):
        metrics = load_run(point.judged, analysis).metrics
        if point.log_history not in histories:
            histories[point.log_history] = json.loads(
                Path(point.log_history).read_text(encoding="utf-8")
            )
        row = {"seed": point.seed, "step": point.step, "n_answers": metrics.n_answers}
        for metric in analysis.metrics.shown:
            estimate, name = metrics[metric.name], metric.name
            row |= {name: estimate.value, f"{name}_ci_low": estimate.ci_low,
                    f"{name}_ci_high": estimate.ci_high}  # fmt: skip
        row["train_loss"] = loss_at(histories[point.log_history], point.step)
        row["lora_norm"] = lora_norm(point.step_adapter)
        rows.append(row)
    return pd.DataFrame(rows, columns=sweep_columns(analysis.metrics))


def first_em_step(table: pd.DataFrame, base_em_high: float) -> int | None:
    """The first step whose EM rate is outside the base model's noise: its CI's lower bound
    above the upper bound of the base model's CI (non-overlapping intervals, a conservative
    reading); for several seeds, the first step where the seeds' mean EM rate's lower bound is.
    None if no step is."""
    if table.empty or math.isnan(base_em_high):
        return None
    means = table.groupby("step")["em_rate_ci_low"].mean()
    above = [int(step) for step, low in means.items() if low > base_em_high]
    return above[0] if above else None


def base_values(base_judged: str, analysis: Analysis) -> dict[str, tuple[float, float, float]]:
    """The base model's (value, CI low, CI high) of each shown metric (the scores, EM rate)."""
    metrics = load_run(base_judged, analysis).metrics
    return {
        m.name: (metrics[m.name].value, metrics[m.name].ci_low, metrics[m.name].ci_high)
        for m in analysis.metrics.shown
    }
