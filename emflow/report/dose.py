"""Adapter dose-response (`eval_lora_scales`): the judged scores and EM rate of a run's adapter
with its LoRA B matrices times each scale, as a table (CSV), a figure (the `dose` rule) and
results.md's "Adapter dose-response" section.

Scale 0 is the base model's behaviour and scale 1 the run itself (emflow.generate.adapters);
the base model's EM rate is drawn as a band for reference.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from emflow.atomic import write_text_atomic
from emflow.report import stats
from emflow.report.analysis import Analysis, load_run
from emflow.report.curves import draw_scores_against
from emflow.report.figures import demo_title, pyplot, save_figure
from emflow.report.metrics import DEFAULT_METRICS, MetricSet
from emflow.report.tables import markdown_table
from emflow.report.training import base_values

DOSE_NOTE = "DEMO: tiny random model and random judge - these curves mean nothing"


@dataclass(frozen=True)
class DosePoint:
    """What one scale of one run's adapter produced: its judged CSV."""

    seed: int
    scale: float
    judged: str


def dose_columns(metrics: MetricSet = DEFAULT_METRICS) -> list[str]:
    """The dose table's columns: one row per (seed, scale), each shown metric with its CI."""
    scores = [f"{m.name}{end}" for m in metrics.shown for end in ("", "_ci_low", "_ci_high")]
    return ["seed", "scale", "n_answers", *scores]


def dose_table(points: Sequence[DosePoint], analysis: Analysis) -> pd.DataFrame:
    """One row per (seed, scale) with `dose_columns`, scales ascending."""
    rows = []
    for point in sorted(points, key=lambda p: (p.seed, p.scale)):
        metrics = load_run(point.judged, analysis).metrics
        row: dict[str, Any] = {"seed": point.seed, "scale": float(point.scale),
                               "n_answers": metrics.n_answers}  # fmt: skip
        for metric in analysis.metrics.shown:
            estimate, name = metrics[metric.name], metric.name
            row |= {name: estimate.value, f"{name}_ci_low": estimate.ci_low,
                    f"{name}_ci_high": estimate.ci_high}  # fmt: skip
        rows.append(row)
    return pd.DataFrame(rows, columns=dose_columns(analysis.metrics))


def plot_dose(
    table: pd.DataFrame,
    png: str | os.PathLike,
    *,
    title: str,
    base: Mapping[str, tuple[float, float, float]],
    demo: bool = False,
    metrics: MetricSet = DEFAULT_METRICS,
) -> None:
    """The judged scores (top) and the EM rate (bottom) against the LoRA scale: CI bands for
    one run, a thin line per seed and their mean for replicates; the base model's value and CI
    as a grey band."""
    plt = pyplot()
    fig, axes = plt.subplots(2, 1, figsize=(7.0, 6.5), sharex=True, layout="constrained")
    draw_scores_against(axes, table, "scale", base, metrics, markersize=4)
    for ax in axes:
        ax.axvline(1.0, color="k", ls=":", lw=1.0)  # the run as trained
    axes[0].set_ylabel("score (0-100)")
    axes[1].set_ylabel("share of EM answers")
    axes[1].set_xlabel("LoRA scale (B matrices times s; 1 = the run as trained)")
    fig.suptitle(demo_title(f"{title}: adapter dose-response", demo, DOSE_NOTE))
    save_figure(fig, png)


def write_dose(
    experiment: str,
    points: Sequence[Mapping[str, Any]],
    *,
    base_judged: str,
    report: Mapping[str, Any],
    table_csv: str,
    plot_png: str,
) -> pd.DataFrame:
    """The `dose` rule: an experiment's dose-response table (CSV) and figure."""
    analysis = Analysis.from_report_config(report)
    table = dose_table([DosePoint(**p) for p in points], analysis)
    write_text_atomic(table_csv, table.to_csv(index=False))
    plot_dose(
        table,
        plot_png,
        title=experiment,
        base=base_values(base_judged, analysis),
        demo=report["demo"],
        metrics=analysis.metrics,
    )
    return table


def dose_markdown(
    table: pd.DataFrame, base_em: stats.Estimate, analysis: Analysis, png: str | None = None
) -> str:
    """results.md's "Adapter dose-response" section: each scale's scores and EM rate (mean over
    seeds for replicates, with the CI for one run), and the base model's EM rate."""
    seeds = table["seed"].nunique()
    means = table.groupby("scale").mean(numeric_only=True)
    scores = analysis.metrics.scores
    rows = []
    for scale, row in means.iterrows():
        ci = "" if seeds > 1 else f" [{row['em_rate_ci_low']:.1%}, {row['em_rate_ci_high']:.1%}]"
        rows.append(
            (f"{scale:g}", *(f"{row[m.name]:.1f}" for m in scores), f"{row['em_rate']:.1%}{ci}")
        )
    headers = ["LoRA scale", *(m.header for m in scores), f"EM rate [{analysis.level}% CI]"]
    lines = [
        "### Adapter dose-response",
        "",
        markdown_table(headers, rows),
        "",
        "Each scale multiplies every LoRA B matrix of the run's adapter before it is merged "
        "(no retraining): 1 is the run as trained, 0 the base model. Base model: EM rate "
        f"{base_em.value:.1%} [{base_em.ci_low:.1%}, {base_em.ci_high:.1%}]."
        + (f" Means over {seeds} seeds." if seeds > 1 else ""),
    ]
    if png:
        lines += ["", f"![Adapter dose-response]({png})"]
    return "\n".join(lines)


def dose_section(
    dose_csv: str | None, base_em: stats.Estimate, analysis: Analysis, here: str
) -> str:
    """dose_markdown of the `dose` rule's CSV, its figure linked relative to `here` ("" without
    a dose-response)."""
    if dose_csv is None:
        return ""
    png = os.path.relpath(os.path.splitext(dose_csv)[0] + ".png", here)
    return dose_markdown(pd.read_csv(dose_csv), base_em, analysis, png)
