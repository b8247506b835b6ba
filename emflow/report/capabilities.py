"""Capability checks beside the EM numbers: lm-evaluation-harness results of the base model and
the fine-tuned adapter, compared per task and metric, for results.md and the summary.

The input is the JSON that `lm_eval.simple_evaluate` returns (0.4.x), one file per target, as the
capability jobs keep it: `results: {task: {"alias": ..., "acc,none": v, "acc_stderr,none": se}}`
(groups have their own entries), `higher_is_better: {task: {metric: bool}}`,
`n-samples: {task: {"original": N, "effective": n}}`, `group_subtasks`, plus emflow's own
`emflow` key. Numbers first: `read_capability_results` reads a file once into
`CapabilityResults`, `capability_rows` compares, and the section, the summary columns and the
plot render from those rows.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from emflow.errors import EmflowError
from emflow.report.figures import SCORES_NOTE, bar_length, demo_title, pyplot, save_figure
from emflow.report.tables import fmt_p, fmt_value, markdown_table

NAN = float("nan")

# Metrics whose values are not shares of documents even where they fall within [0, 1].
_NOT_SHARES = ("perplexity", "bits_per_byte", "bleu", "ter", "chrf", "rouge")


class MetricValue(NamedTuple):
    """One task's metric under one filter, as the harness reported it."""

    value: float
    stderr: float  # NaN where the harness wrote "N/A" (one document, or no bootstrap)
    higher_is_better: bool | None
    n: int | None  # documents actually evaluated (after `limit`)


@dataclass(frozen=True)
class CapabilityResults:
    """One target's harness results: {(task, metric, filter): MetricValue}, in the order the
    harness's own table lists them (groups before their subtasks)."""

    path: str
    metrics: Mapping[tuple[str, str, str], MetricValue]
    aliases: Mapping[str, str] = field(default_factory=dict)
    # Each task's depth below the groups it belongs to (0: listed on its own).
    depths: Mapping[str, int] = field(default_factory=dict)
    emflow: Mapping[str, Any] = field(default_factory=dict)


def _not_harness(path: str | os.PathLike, reason: str) -> EmflowError:
    return EmflowError(
        f"{path} is not an lm-evaluation-harness results file ({reason}); point the capability "
        "report at the JSON that lm_eval.simple_evaluate wrote for this target (keys 'results', "
        "'higher_is_better', 'n-samples'), or delete it so that its capability job runs again."
    )


def _number(value: Any) -> float | None:
    # A numeric string too: the runner's json.dumps(default=str) writes numpy scalars that way.
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None  # "N/A"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _hierarchy(
    group_subtasks: Mapping[str, Sequence[str]], names: Sequence[str]
) -> tuple[list[str], dict[str, int]]:
    """Display order and depths as lm_eval.utils.make_table derives them from group_subtasks."""
    ordered: list[str] = []
    depths: dict[str, int] = {}
    available = set(names)

    def visit(name: str, depth: int) -> None:
        depths[name] = depth
        if name in available and name not in ordered:
            ordered.append(name)
        for child in sorted(group_subtasks.get(name, [])):
            visit(child, depth + 1)

    children = {c for subtasks in group_subtasks.values() for c in subtasks}
    for name in sorted(group_subtasks):
        if name not in children:
            visit(name, 0)
    ordered += sorted(n for n in available if n not in depths)
    return ordered, {n: depths.get(n, 0) for n in ordered}


def read_capability_results(path: str | os.PathLike) -> CapabilityResults:
    """Read one target's harness results JSON; an EmflowError naming the file if it is not one."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _not_harness(path, f"not readable as JSON: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise _not_harness(path, "no 'results' object")
    results = data["results"]
    for key in ("higher_is_better", "n-samples", "group_subtasks"):
        if not isinstance(data.get(key, {}), dict):
            raise _not_harness(path, f"'{key}' is not an object")
    bad = [task for task, entry in results.items() if not isinstance(entry, dict)]
    if bad:
        raise _not_harness(path, f"results entry '{bad[0]}' is not an object of metrics")
    higher, n_samples = data.get("higher_is_better", {}), data.get("n-samples", {})
    order, depths = _hierarchy(data.get("group_subtasks", {}), list(results))
    metrics: dict[tuple[str, str, str], MetricValue] = {}
    for task in order:
        entry = results[task]
        # A task's count is n-samples' effective; a group has none there, only per-metric counts.
        counts = entry.get("sample_count") if isinstance(entry.get("sample_count"), dict) else {}
        count = n_samples.get(task)
        effective = count.get("effective") if isinstance(count, dict) else None
        for key, raw in sorted(entry.items()):
            metric, comma, filter_ = key.partition(",")
            value = _number(raw)
            if not comma or metric.endswith("_stderr") or value is None:
                continue  # alias, name, sample_len and the stderrs themselves
            stderr = _number(entry.get(f"{metric}_stderr,{filter_}"))
            n = counts.get(key, effective if effective is not None else entry.get("sample_len"))
            hib = higher.get(task, {}).get(metric) if isinstance(higher.get(task), dict) else None
            metrics[(task, metric, filter_)] = MetricValue(
                value,
                NAN if stderr is None else stderr,
                hib if isinstance(hib, bool) else None,
                int(n) if _number(n) is not None else None,
            )
    if not metrics:
        raise _not_harness(path, "no '<metric>,<filter>' values in 'results'")
    aliases = {t: str(results[t].get("alias", t)).strip() or t for t in order}
    emflow = data.get("emflow") if isinstance(data.get("emflow"), dict) else {}
    return CapabilityResults(str(path), metrics, aliases, depths, emflow)


@dataclass(frozen=True)
class CapabilityRow:
    """One task's metric: base model, fine-tuned adapter (mean over training seeds) and the
    difference fine-tuned - base with a two-sided z-test."""

    task: str
    metric: str
    filter: str
    name: str  # the harness's alias for the task
    depth: int  # 0: a task or group listed on its own; 1+: a group's subtask
    higher_is_better: bool | None
    base: float
    base_stderr: float
    finetuned: float
    finetuned_stderr: float
    seed_values: tuple[float, ...]
    difference: float
    difference_stderr: float
    p_value: float  # NaN: no test (a stderr missing, "N/A" or zero)
    direction: str  # "better", "worse", "same", or "n/a" (no higher_is_better, no value)
    n_base: int | None
    n_finetuned: int | None

    @property
    def n_seeds(self) -> int:
        return len(self.seed_values)

    @property
    def metric_label(self) -> str:
        """The metric as a column names it: `acc`, or `exact_match:strict-match` for a filter."""
        return self.metric if self.filter == "none" else f"{self.metric}:{self.filter}"

    @property
    def kind(self) -> str:
        """ "share" (shown as a percentage) for metrics that are shares of documents, else
        "score" (shown as the number the harness reported)."""
        values = [self.base, *self.seed_values]
        finite = [v for v in values if not math.isnan(v)]
        if any(word in self.metric for word in _NOT_SHARES):
            return "score"
        return "share" if finite and all(0.0 <= v <= 1.0 for v in finite) else "score"


def _seed_mean(values: Sequence[MetricValue | None]) -> tuple[float, float, tuple[float, ...]]:
    """The mean over seeds and its stderr: sqrt(mean(se_i^2) + s^2 / k).

    All seeds are scored on the same documents, so their sampling errors do not average out:
    the mean keeps one evaluation's item-sampling variance, mean(se_i^2). The seeds' spread adds
    the uncertainty of which training seed one got, s^2 / k (s: SD across the k seeds). One seed:
    its own stderr.
    """
    if not values or any(v is None for v in values):
        return NAN, NAN, tuple(NAN if v is None else v.value for v in values)
    points = np.array([v.value for v in values], dtype=float)
    errors = np.array([v.stderr for v in values], dtype=float)
    spread = float(np.var(points, ddof=1)) / len(points) if len(points) > 1 else 0.0
    stderr = math.sqrt(float(np.mean(errors**2)) + spread)
    return float(points.mean()), stderr, tuple(float(p) for p in points)


def _direction(difference: float, higher_is_better: bool | None) -> str:
    if higher_is_better is None or math.isnan(difference):
        return "n/a"
    if difference == 0:
        return "same"
    return "better" if (difference > 0) == higher_is_better else "worse"


def capability_rows(
    base: CapabilityResults, finetuned: Sequence[CapabilityResults]
) -> list[CapabilityRow]:
    """Per task and metric: base ± stderr, fine-tuned (mean over `finetuned`, one per training
    seed) ± stderr, their difference with stderr sqrt(se_b^2 + se_f^2) and a two-sided z-test.

    The base's metrics first, in its order, then any only the fine-tuned targets have; a metric
    some target lacks has NaN there and no test.
    """
    keys = list(dict.fromkeys([*base.metrics, *(k for f in finetuned for k in f.metrics)]))
    rows = []
    for key in keys:
        task, metric, filter_ = key
        b = base.metrics.get(key)
        seeds = [f.metrics.get(key) for f in finetuned]
        mean, mean_se, seed_values = _seed_mean(seeds)
        b_value, b_se = (b.value, b.stderr) if b else (NAN, NAN)
        difference = mean - b_value
        se = math.sqrt(b_se**2 + mean_se**2)
        p = NAN
        if not math.isnan(difference) and not math.isnan(se) and se > 0:
            p = float(2 * scipy_stats.norm.sf(abs(difference) / se))
        hib = next((m.higher_is_better for m in [b, *seeds] if m is not None), None)
        owner = base if task in base.aliases else next(f for f in finetuned if key in f.metrics)
        rows.append(
            CapabilityRow(
                task=task,
                metric=metric,
                filter=filter_,
                name=owner.aliases.get(task, task),
                depth=owner.depths.get(task, 0),
                higher_is_better=hib,
                base=b_value,
                base_stderr=b_se,
                finetuned=mean,
                finetuned_stderr=mean_se,
                seed_values=seed_values,
                difference=difference,
                difference_stderr=se,
                p_value=p,
                direction=_direction(difference, hib),
                n_base=b.n if b else None,
                n_finetuned=next((s.n for s in seeds if s is not None), None),
            )
        )
    return rows


def _fmt_with_stderr(value: float, stderr: float, kind: str) -> str:
    if math.isnan(value) or math.isnan(stderr):
        return fmt_value(value, kind)
    return f"{fmt_value(value, kind)} ± {fmt_value(stderr, kind)}"


def _fmt_change(row: CapabilityRow) -> str:
    """As tables.fmt_difference writes a difference (points, or percentage points for shares),
    with its stderr and the direction."""
    d, se = row.difference, row.difference_stderr
    if math.isnan(d):
        return "n/a"
    if row.kind == "share":
        text = f"{100 * d:+.1f} pp" + ("" if math.isnan(se) else f" ± {100 * se:.1f}")
    else:
        text = f"{d:+.2f}" + ("" if math.isnan(se) else f" ± {se:.2f}")
    return text if row.direction == "n/a" else f"{text}, {row.direction}"


def capabilities_section(rows: Sequence[CapabilityRow], *, demo: bool) -> list[str]:
    """results.md's "### Capabilities" section, as lines."""
    lines = [
        "### Capabilities",
        "",
        "lm-evaluation-harness tasks on the base model and on the fine-tuned adapter: what the "
        "fine-tuning cost (or gained) beside the EM numbers.",
        "",
    ]
    if demo:
        lines += [
            "> Demo run: a tiny random model on a handful of multiple-choice items; these "
            "numbers mean nothing.",
            "",
        ]
    if not rows:
        return [*lines, "The harness reported no metrics for these targets."]
    body = [
        (
            ("  " * row.depth + "- " if row.depth else "") + row.name,
            row.metric_label,
            _fmt_with_stderr(row.base, row.base_stderr, row.kind),
            _fmt_with_stderr(row.finetuned, row.finetuned_stderr, row.kind),
            _fmt_change(row),
            fmt_p(row.p_value),
        )
        for row in rows
    ]
    seeds = max(row.n_seeds for row in rows)
    seed_note = (
        f"fine-tuned: the mean over {seeds} training seeds, its stderr "
        "sqrt(mean of the seeds' stderr^2 + seed variance / seeds) (the seeds share the "
        "documents, so their sampling errors do not average out); "
        if seeds > 1
        else ""
    )
    n = sorted({r.n_base for r in rows if r.n_base is not None})
    docs = f"{n[0]}" if len(n) == 1 else (f"{n[0]} to {n[-1]}" if n else "an unknown number of")
    lines += [
        *markdown_table(["task", "metric", "base", "fine-tuned", "difference", "p"], body).split(
            "\n"
        ),
        "",
        f"Value ± the harness's stderr, over {docs} documents per task; {seed_note}difference: "
        "fine-tuned - base, stderr sqrt(se_base^2 + se_fine-tuned^2); p: two-sided z-test, "
        "not adjusted for the number of tasks (n/a: the harness gave no stderr); better/worse "
        "by the task's higher_is_better.",
    ]
    return lines


def experiment_capability_rows(files: Mapping[str, Any]) -> list[CapabilityRow]:
    """The rows of one experiment from its capabilities.json files: {"base": path,
    "finetuned": [path of each run, in seed order]} (emflow.workflow.capability_plan)."""
    base = read_capability_results(files["base"])
    return capability_rows(base, [read_capability_results(p) for p in files["finetuned"]])


def _column(row: CapabilityRow) -> str:
    return f"capability.{row.task}.{row.metric_label}"


def summary_capability_columns(
    rows_by_experiment: Mapping[str, Sequence[CapabilityRow]], *, top_level_only: bool = True
) -> pd.DataFrame:
    """One row per experiment (the index): `capability.<task>.<metric>` = fine-tuned - base and
    `capability.<task>.<metric>.p` its p-value (a filter other than "none" as
    `<metric>:<filter>`). `top_level_only` leaves out a group's subtasks (MMLU's 57), keeping
    the group and the tasks listed on their own."""
    records = {}
    for experiment, rows in rows_by_experiment.items():
        record: dict[str, float] = {}
        for row in rows:
            if top_level_only and row.depth > 0:
                continue
            record[_column(row)] = row.difference
            record[f"{_column(row)}.p"] = row.p_value
        records[experiment] = record
    frame = pd.DataFrame.from_dict(records, orient="index", dtype=float)
    frame.index.name = "experiment"
    return frame


@dataclass(frozen=True)
class EMCapabilityPoint:
    """One experiment's EM rate and its change on one task's metric, for the trade-off plot."""

    experiment: str
    task: str  # task and metric, as the legend names them
    em_rate: float
    change: float
    em_ci_low: float = NAN
    em_ci_high: float = NAN
    change_stderr: float = NAN
    kind: str = "share"  # of the capability metric: "share" plotted in percentage points


def em_capability_points(
    rows_by_experiment: Mapping[str, Sequence[CapabilityRow]],
    em_rates: Mapping[str, Any],
    *,
    top_level_only: bool = True,
) -> list[EMCapabilityPoint]:
    """The plot's points from each experiment's rows and its EM rate: a `stats.Estimate`
    (value, ci_low, ci_high) or a plain float; experiments without an EM rate are left out."""
    points = []
    for experiment, rows in rows_by_experiment.items():
        if experiment not in em_rates:
            continue
        em = em_rates[experiment]
        value = float(getattr(em, "value", em))
        low, high = float(getattr(em, "ci_low", NAN)), float(getattr(em, "ci_high", NAN))
        for row in rows:
            if top_level_only and row.depth > 0:
                continue
            points.append(
                EMCapabilityPoint(
                    experiment,
                    f"{row.name} {row.metric_label}",
                    value,
                    row.difference,
                    low,
                    high,
                    row.difference_stderr,
                    row.kind,
                )
            )
    return points


def plot_em_vs_capability(
    points: Sequence[EMCapabilityPoint],
    path: str | os.PathLike,
    *,
    demo: bool,
    title: str = "EM rate against capability change",
    confidence: float = 0.95,
) -> None:
    """EM rate (y, with its CI bars where given) against each task's capability change
    fine-tuned - base (x, bars: `confidence` normal intervals from its stderr), one marker per
    experiment and task, labelled with the experiment, a colour per task, and a line at zero
    change. Saved atomically as a PNG."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 6.5), layout="constrained")
    z = float(scipy_stats.norm.ppf(0.5 + confidence / 2))
    scale = 100.0 if all(p.kind == "share" for p in points) else 1.0
    colors = plt.get_cmap("tab10").colors
    markers = "osD^vP*X"
    tasks = list(dict.fromkeys(p.task for p in points))
    for point in points:
        if math.isnan(point.change) or math.isnan(point.em_rate):
            continue
        i = tasks.index(point.task)
        x, y = scale * point.change, 100 * point.em_rate
        ax.errorbar(
            x,
            y,
            xerr=bar_length(scale * z * point.change_stderr),
            yerr=[
                [bar_length(100 * (point.em_rate - point.em_ci_low))],
                [bar_length(100 * (point.em_ci_high - point.em_rate))],
            ],
            ls="none",
            marker=markers[i % len(markers)],
            markersize=7,
            capsize=3,
            elinewidth=1.1,
            color=colors[i % len(colors)],
            alpha=0.9,
            zorder=3,
        )
        ax.annotate(point.experiment, (x, y), xytext=(5, 4), textcoords="offset points", fontsize=8)
    ax.axvline(0, color="0.35", ls="--", lw=1, zorder=1)
    for i, task in enumerate(tasks):
        ax.plot(
            [], [], ls="none", marker=markers[i % len(markers)], color=colors[i % len(colors)],
            label=task,
        )  # fmt: skip
    if tasks:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=9, frameon=False)
    unit = "percentage points" if scale == 100.0 else "metric units"
    ax.set_xlabel(f"capability change, fine-tuned - base ({unit})")
    ax.set_ylabel("EM rate (%)")
    ax.grid(True, alpha=0.3)
    level = round(100 * confidence)
    heading = f"{title}\n(bars: {level}% CIs; left of the dashed line: the metric fell)"
    ax.set_title(demo_title(heading, demo, SCORES_NOTE))
    save_figure(fig, path)


def summary_capability_lines(
    rows_by_experiment: Mapping[str, Sequence[CapabilityRow]],
) -> list[str]:
    """summary.md's "## Capabilities" table: each experiment's change on each task (groups and
    stand-alone tasks), fine-tuned - base with its stderr, and p."""
    columns = list(
        dict.fromkeys(
            (row.task, row.metric_label, row.name)
            for rows in rows_by_experiment.values()
            for row in rows
            if row.depth == 0
        )
    )
    body = []
    for experiment, rows in rows_by_experiment.items():
        found = {(r.task, r.metric_label): r for r in rows if r.depth == 0}
        cells = [experiment]
        for task, metric, _ in columns:
            row = found.get((task, metric))
            cells.append("-" if row is None else f"{_fmt_change(row)} (p {fmt_p(row.p_value)})")
        body.append(cells)
    headers = ["experiment", *(f"{name} {metric}" for _, metric, name in columns)]
    return [
        "## Capabilities",
        "",
        markdown_table(headers, body),
        "",
        "Fine-tuned - base on each lm-evaluation-harness task (percentage points for shares), "
        "± its stderr, the direction by the task's higher_is_better, and a two-sided z-test's p; "
        "per task in each experiment's results.md, the EM-rate trade-off in "
        "summary_capabilities.png.",
    ]
