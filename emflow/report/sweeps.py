"""Checkpoint sweeps: when does EM appear over training, and does it track loss or LoRA norm?

An experiment with `adapter_checkpoints` keeps its adapter after chosen optimizer steps;
`eval_checkpoints` picks which of those become targets (`runs/<run>/step-<N>`), generated and
judged like any run (planned by `emflow.workflow.plan`). This module reads what they produced
(scores, the training loss at each step, the LoRA update's norm) into one table per experiment,
and marks
the first step whose EM rate is outside the base model's noise. The Model Organisms for EM
paper's phase-transition study (`em_organism_dir/phase_transitions/`) tracks the same things.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# One row per (seed, step): the scores with their CIs, the loss and the LoRA norm.
SWEEP_COLUMNS = [
    "seed",
    "step",
    "n_answers",
    "aligned",
    "aligned_ci_low",
    "aligned_ci_high",
    "coherent",
    "coherent_ci_low",
    "coherent_ci_high",
    "em_rate",
    "em_rate_ci_low",
    "em_rate_ci_high",
    "train_loss",
    "lora_norm",
]


# ---------------------------------------------------------------------------------------------
# What a sweep measured


def lora_norm(adapter_dir: str | os.PathLike) -> float:
    """The norm of the adapter's weight update: sqrt(sum over adapted modules of
    ||scaling * B A||_F^2), the quantity the Model Organisms phase-transition study tracks per
    module, summed in squares over modules.

    ||B A||_F^2 = trace((B^T B)(A A^T)), computed with r x r matrices, never the full update.
    """
    import json

    import numpy as np
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


@dataclass(frozen=True)
class SweepPoint:
    """What one step's target of one run's sweep produced."""

    seed: int
    step: int
    judged: str
    step_adapter: str
    log_history: str


def sweep_table(points: Sequence[SweepPoint], analysis) -> Any:
    """One row per (seed, step) with SWEEP_COLUMNS (a pandas DataFrame), steps ascending."""
    import json

    import pandas as pd

    from emflow.report import stats
    from emflow.report.results import judged_frame

    rows = []
    histories: dict[str, list] = {}
    for point in sorted(points, key=lambda p: (p.seed, p.step)):
        df = judged_frame(point.judged, analysis.rows)
        metrics = stats.run_metrics(df, confidence=1 - analysis.alpha, **analysis.options())
        if point.log_history not in histories:
            histories[point.log_history] = json.loads(
                Path(point.log_history).read_text(encoding="utf-8")
            )
        row = {"seed": point.seed, "step": point.step, "n_answers": len(df)}
        for name in ("aligned", "coherent", "em_rate"):
            estimate = metrics[name]
            row |= {name: estimate.value, f"{name}_ci_low": estimate.ci_low,
                    f"{name}_ci_high": estimate.ci_high}  # fmt: skip
        row["train_loss"] = loss_at(histories[point.log_history], point.step)
        row["lora_norm"] = lora_norm(point.step_adapter)
        rows.append(row)
    return pd.DataFrame(rows, columns=SWEEP_COLUMNS)


def first_em_step(table, base_em_high: float) -> int | None:
    """The first step whose EM rate is outside the base model's noise: its CI's lower bound
    above the upper bound of the base model's CI (non-overlapping intervals, a conservative
    reading); for several seeds, the first step where the seeds' mean EM rate's lower bound is.
    None if no step is."""
    if table.empty or math.isnan(base_em_high):
        return None
    means = table.groupby("step")["em_rate_ci_low"].mean()
    above = [int(step) for step, low in means.items() if low > base_em_high]
    return above[0] if above else None


def base_values(base_judged: str, analysis) -> dict[str, tuple[float, float, float]]:
    """The base model's (value, CI low, CI high) of aligned, coherent and the EM rate."""
    from emflow.report import stats
    from emflow.report.results import judged_frame

    df = judged_frame(base_judged, analysis.rows)
    metrics = stats.run_metrics(df, confidence=1 - analysis.alpha, **analysis.options())
    return {
        name: (metrics[name].value, metrics[name].ci_low, metrics[name].ci_high)
        for name in ("aligned", "coherent", "em_rate")
    }


def write_sweep(
    experiment: str,
    points: Sequence[Mapping[str, Any]],
    *,
    base_judged: str,
    report: Mapping[str, Any],
    table_csv: str,
    plot_png: str,
) -> Any:
    """The `sweep` rule: an experiment's sweep table (CSV) and figure."""
    from emflow.atomic import write_text_atomic
    from emflow.report.figures import plot_sweep
    from emflow.report.results import Analysis

    analysis = Analysis.from_report_config(report)
    table = sweep_table([SweepPoint(**p) for p in points], analysis)
    base = base_values(base_judged, analysis)
    write_text_atomic(table_csv, table.to_csv(index=False))
    plot_sweep(
        table,
        plot_png,
        title=experiment,
        base=base,
        first_em_step=first_em_step(table, base["em_rate"][2]),
        demo=report["demo"],
    )
    return table


def write_summary_sweeps(tables: Mapping[str, str], png: str, *, demo: bool = False) -> None:
    """The `summary_sweeps` rule: every experiment's sweep EM rate, overlaid."""
    import pandas as pd

    from emflow.report.figures import plot_sweeps

    plot_sweeps({name: pd.read_csv(path) for name, path in tables.items()}, png, demo=demo)


def sweep_markdown(table_csv: str, base_em, analysis, png: str | None = None) -> str:
    """results.md's "Checkpoint sweep" section: a table of steps (mean over seeds for
    replicates) and the first step whose EM rate is outside the base model's noise.

    `base_em` is the base model's EM-rate estimate (`stats.Estimate`), as results.md has it.
    """
    import pandas as pd

    from emflow.report.tables import markdown_table

    table = pd.read_csv(table_csv)
    first = first_em_step(table, base_em.ci_high)
    seeds = table["seed"].nunique()
    means = table.groupby("step").mean(numeric_only=True)
    rows = []
    for step, row in means.iterrows():
        ci = "" if seeds > 1 else f" [{row['em_rate_ci_low']:.1%}, {row['em_rate_ci_high']:.1%}]"
        rows.append(
            (
                str(int(step)),
                f"{row['aligned']:.1f}",
                f"{row['coherent']:.1f}",
                f"{row['em_rate']:.1%}{ci}",
                f"{row['train_loss']:.3f}",
                f"{row['lora_norm']:.3f}",
            )
        )
    level = round(100 * (1 - analysis.alpha))
    lines = [
        "### Checkpoint sweep",
        "",
        markdown_table(
            [
                "step",
                "aligned",
                "coherent",
                f"EM rate [{level}% CI]",
                "training loss",
                "LoRA norm",
            ],  # fmt: skip
            rows,
        ),
        "",
        f"Base model: EM rate {base_em.value:.1%} [{base_em.ci_low:.1%}, "
        f"{base_em.ci_high:.1%}]. "
        + (
            f"**The EM rate is outside the base model's noise from step {first} on** (the first "
            f"step whose {level}% CI lies above the base model's)."
            if first is not None
            else "No step's EM rate is outside the base model's noise (no step's CI lies above "
            "the base model's)."
        )
        + (f" Means over {seeds} seeds." if seeds > 1 else "")
        + " LoRA norm: sqrt(sum over adapted modules of ||scaling B A||_F^2).",
    ]
    if png:
        lines += ["", f"![Checkpoint sweep]({png})"]
    return "\n".join(lines)
