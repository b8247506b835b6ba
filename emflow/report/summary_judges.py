"""The summary's judge panel: each judge's EM rate in every row of the summary table and the
spread across judges (summary.md's "Judges" table, summary.csv's per-judge columns), and each
answer's scores by every judge for the judge-vs-judge plot (`emflow.report.judge_plots`).

Present only where the config names a panel (`judge.panel`), so a one-judge summary is unchanged.
A panel judge's EM rate follows the primary's rule exactly: the same `load_run` (pooled answers
with a bootstrap CI for one run, the mean over seeds with a Student t CI for replicates).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from emflow.config import ExperimentConfig
from emflow.paths import Layout, base_target, experiment_runs, run_target
from emflow.report import stats
from emflow.report.agreement import PRIMARY
from emflow.report.analysis import Analysis, JudgedRun, SummaryRow, SummaryRun, load_run
from emflow.report.tables import csv_number, fmt_estimate, markdown_table

# {experiment: {panel judge: {"base": judged CSV, "finetuned": [one per seed, in the order of the
# run's seeds], ...}}}: Plan.panel_results of each experiment (usage keys are not read here); a
# judge's None: it has not judged that experiment yet (`emflow summary`).
SummaryPanel = Mapping[str, Mapping[str, Mapping[str, Any] | None]]


@dataclass(frozen=True)
class SummaryJudges:
    """Every judge's run of each summary row: `runs[i]` maps a judge (the primary first) to its
    JudgedRun of row i, or None where that judge has not scored the row's answers."""

    judges: list[str]
    runs: list[dict[str, JudgedRun | None]]

    @property
    def panel(self) -> list[str]:
        """The panel judges, without the primary."""
        return [j for j in self.judges if j != PRIMARY]

    def em_rate(self, i: int, judge: str) -> stats.Estimate | None:
        run = self.runs[i][judge]
        return None if run is None else run.metrics["em_rate"]

    def spread(self, i: int) -> float:
        """Highest minus lowest judge's EM rate of row i (a fraction); NaN with fewer than two."""
        rates = [e.value for j in self.judges if (e := self.em_rate(i, j)) is not None]
        rates = [r for r in rates if not math.isnan(r)]
        return max(rates) - min(rates) if len(rates) > 1 else float("nan")


def summary_judges(
    runs: Sequence[SummaryRun],
    rows: Sequence[SummaryRow],
    panel: SummaryPanel | None,
    analysis: Analysis,
) -> SummaryJudges | None:
    """Each judge's run of every row of `summary_rows(runs, ...)` (its base rows first, then one
    per run), or None without a panel. A base row takes its panel files from the first
    experiment on that base model whose panel has the judge."""
    if not panel:
        return None
    judges = [PRIMARY, *dict.fromkeys(j for files in panel.values() for j in files)]
    # summary_rows' base rows: one per (base name, judged CSV), in order of first appearance.
    base_keys = list(
        dict.fromkeys((r.base_name, str(r.base_judged)) for r in runs if r.base_judged)
    )
    if len(rows) != len(base_keys) + len(runs):
        raise ValueError("summary_judges needs the rows summary_rows made of these runs")
    files: list[dict[str, Any]] = [{} for _ in base_keys]
    for run in runs:
        own = {j: f for j, f in panel.get(run.name, {}).items() if f is not None}
        if run.base_judged:
            at = base_keys.index((run.base_name, str(run.base_judged)))
            for judge, judged in own.items():
                files[at].setdefault(judge, judged["base"])
        per_run = {}
        for judge, judged in own.items():
            tuned = list(judged["finetuned"])
            if isinstance(run.judged, Mapping):
                per_run[judge] = dict(zip(run.judged, tuned, strict=True))
            else:
                per_run[judge] = tuned[0]
        files.append(per_run)
    table = [
        {PRIMARY: row.run} | {j: load_run(f[j], analysis) if j in f else None for j in judges[1:]}
        for row, f in zip(rows, files, strict=True)
    ]
    return SummaryJudges(judges, table)


def finished_panel(
    runs: Sequence[SummaryRun],
    experiments: Mapping[str, ExperimentConfig],
    layout: Layout,
    judges: Sequence[str],
) -> dict[str, dict[str, dict[str, Any] | None]]:
    """`emflow summary`'s panel: each judge's files of an experiment where they exist for every
    target the summary reads of it (the base model and each judged seed), else None, so that the
    Judges table shows "-" there."""
    panel: dict[str, dict[str, dict[str, Any] | None]] = {}
    for run in runs:
        experiment = experiments[run.name]
        by_seed = experiment_runs(run.name, experiment)
        seeds = list(run.judged) if isinstance(run.judged, Mapping) else [experiment.seed]
        base = base_target(experiment.model)
        for judge in judges:
            judged = {
                "base": layout.panel_judged(base, judge),
                "finetuned": [layout.panel_judged(run_target(by_seed[s]), judge) for s in seeds],
            }
            done = all(Path(p).exists() for p in (judged["base"], *judged["finetuned"]))
            panel.setdefault(run.name, {})[judge] = judged if done else None
    return panel


# ---------------------------------------------------------------------------------------------
# summary.md and summary.csv


def judges_lines(
    rows: Sequence[SummaryRow], judges: SummaryJudges, analysis: Analysis
) -> list[str]:
    """summary.md's "Judges" section: one row per summary row, each judge's EM rate [CI] and the
    spread across judges."""
    level, rule = analysis.level, analysis.thresholds.em.describe()
    headers = [
        "experiment",
        *(f"{j}{' (headline)' if j == PRIMARY else ''} [{level}% CI]" for j in judges.judges),
        "spread (pp)",
    ]
    body = []
    for i, row in enumerate(rows):
        cells = [row.name]
        for judge in judges.judges:
            estimate = judges.em_rate(i, judge)
            cells.append("-" if estimate is None else fmt_estimate(estimate, "rate"))
        spread = judges.spread(i)
        cells.append("-" if math.isnan(spread) else f"{100 * spread:.1f}")
        body.append(cells)
    return [
        "## Judges",
        "",
        markdown_table(headers, body),
        "",
        f"EM rate ({rule}) of the same answers by each judge; the headline table above is the "
        f"primary judge's (the `judge` section), the others are `judge.panel`'s. CIs as the "
        "headline's (a run with several seeds: the mean over seeds). spread: highest minus lowest "
        "judge's EM rate in percentage points; -: that judge has not scored the row's answers.",
    ]


def judge_columns(judges: SummaryJudges) -> list[str]:
    """summary.csv's panel columns: each panel judge's EM rate and CI, then the spread (a
    fraction, as `em_rate`); the primary's EM rate is the `em_rate` column itself."""
    ends = ("em_rate", "em_rate_ci_low", "em_rate_ci_high")
    return [f"{end}.{judge}" for judge in judges.panel for end in ends] + ["em_rate_judge_spread"]


def judge_cells(judges: SummaryJudges, i: int) -> list[str]:
    cells = []
    for judge in judges.panel:
        e = judges.em_rate(i, judge)
        cells += (
            ["", "", ""] if e is None else [csv_number(v) for v in (e.value, e.ci_low, e.ci_high)]
        )
    return [*cells, csv_number(judges.spread(i))]


# ---------------------------------------------------------------------------------------------
# Per-answer scores, for the judge-vs-judge plot


def answer_scores(run: JudgedRun, analysis: Analysis) -> pd.DataFrame:
    """One judge's scores of a run's answers: columns seed (-1 for a single run), id and each
    judged score (NaN where the judge gave no number)."""
    frames = run.frames if run.replicated else {-1: run.frames}
    parts = []
    for seed, df in frames.items():
        values = stats.per_answer_values(df, analysis.thresholds.em, analysis.metrics)
        part = pd.DataFrame(values, columns=list(analysis.metrics.names))
        part = part[[m.name for m in analysis.metrics.scores]]
        part.insert(0, "id", df["id"].astype(str).to_numpy())
        part.insert(0, "seed", seed)
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def paired_scores(
    rows: Sequence[SummaryRow], judges: SummaryJudges, judge: str, analysis: Analysis
) -> pd.DataFrame:
    """Every answer both the primary and `judge` scored, over every summary row (base models
    once each, every run's seeds), matched on row, seed and id: columns target ("base model" or
    "fine-tuned"), row, seed, id, then `<metric>_primary` and `<metric>_judge` per score."""
    parts = []
    for i, row in enumerate(rows):
        other = judges.runs[i][judge]
        if other is None:
            continue
        joined = answer_scores(row.run, analysis).merge(
            answer_scores(other, analysis), on=["seed", "id"], suffixes=("_primary", "_judge")
        )
        joined.insert(0, "row", row.name)
        joined.insert(0, "target", "base model" if row.is_base else "fine-tuned")
        parts.append(joined)
    if not parts:
        columns = [f"{m.name}_{s}" for m in analysis.metrics.scores for s in ("primary", "judge")]
        return pd.DataFrame(columns=["target", "row", "seed", "id", *columns], dtype=float)
    return pd.concat(parts, ignore_index=True)


def finite_pairs(paired: pd.DataFrame, metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(primary, judge, is base) of the answers both judges scored a number on `metric`."""
    x = paired[f"{metric}_primary"].to_numpy(dtype=float)
    y = paired[f"{metric}_judge"].to_numpy(dtype=float)
    keep = ~np.isnan(x) & ~np.isnan(y)
    base = (paired["target"] == "base model").to_numpy()
    return x[keep], y[keep], base[keep]
