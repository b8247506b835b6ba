"""The summary over all experiments: one table row per experiment (and per base model), its CSV,
the aligned-vs-coherent plot and every run's training curves overlaid; for question sets answered
several times per question, each question's EM rate in every experiment.

Used by the `summary` rule and by `emflow summary` (emflow.report.summary_cli), which
summarises the runs judged so far.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from emflow.atomic import write_text_atomic
from emflow.config import ExperimentConfig
from emflow.errors import EmflowError
from emflow.paths import Layout, base_target, experiment_runs, run_target
from emflow.report import stats
from emflow.report.analysis import (
    Analysis,
    Pair,
    SummaryQuestionEM,
    SummaryRow,
    SummaryRun,
    summary_question_em,
    summary_rows,
)
from emflow.report.capabilities import (
    em_capability_points,
    experiment_capability_rows,
    plot_em_vs_capability,
    summary_capability_columns,
    summary_capability_lines,
)
from emflow.report.curves import plot_training_curves
from emflow.report.families import family_sections, group_references
from emflow.report.figures import plot_scatter
from emflow.report.judge_plots import plot_judge_scores
from emflow.report.judged import read_reported
from emflow.report.metrics import Metric
from emflow.report.summary_judges import (
    SummaryJudges,
    SummaryPanel,
    judge_cells,
    judge_columns,
    judges_lines,
    summary_judges,
)
from emflow.report.tables import (
    DEMO_NOTICE,
    csv_number,
    fmt_difference,
    fmt_estimate,
    fmt_p,
    fmt_question_em,
    fmt_value,
    markdown_table,
)
from emflow.report.training import read_log_histories


def experiment_summary_runs(
    experiments: Mapping[str, ExperimentConfig], layout: Layout, *, finished_only: bool = False
) -> list[SummaryRun]:
    """The summary's runs, one per experiment, with the paths `layout` gives them.

    With `finished_only`, only runs (and seeds) judged so far are kept, and an experiment none of
    whose seeds is judged, or whose base model is not, is left out.
    """
    runs = []
    for name, experiment in experiments.items():
        base = layout.judged(base_target(experiment.model))
        by_seed = experiment_runs(name, experiment)
        if finished_only:
            by_seed = {
                s: r for s, r in by_seed.items() if Path(layout.judged(run_target(r))).exists()
            }
            if not (by_seed and Path(base).exists()):
                continue
        judged = {s: layout.judged(run_target(r)) for s, r in by_seed.items()}
        histories = {s: layout.log_history(r) for s, r in by_seed.items()}
        single = experiment.seeds is None
        runs.append(
            SummaryRun(
                name,
                judged[experiment.seed] if single else judged,
                base_judged=base,
                results_md=layout.results_md(name),
                log_history=histories[experiment.seed] if single else histories,
                compare_to=reference(name, experiments, layout.config_json(name)),
            )
        )
    return runs


def reference(name: str, experiments: Mapping[str, ExperimentConfig], source: str) -> str | None:
    """The full name of the experiment `name`'s `compare_to` names: a sibling in its group."""
    experiment = experiments[name]
    if experiment.compare_to is None:
        return None
    group = name.rsplit("/", 1)[0] if "/" in name else ""
    full = f"{group}/{experiment.compare_to}" if group else experiment.compare_to
    if full == name or full not in experiments:
        raise EmflowError(
            f"{source}: compare_to is '{experiment.compare_to}', which is "
            f"not another experiment of group '{group}' this workflow selects; name a sibling "
            "folder (e.g. mixed_baseline) or select it in the workflow config's experiments."
        )
    return full


# ---------------------------------------------------------------------------------------------
# The table, as Markdown and CSV


def _marked(row: SummaryRow, metric: Metric, ci: bool = True) -> str:
    estimate, kind = row.metrics[metric.name], metric.kind
    text = fmt_estimate(estimate, kind) if ci else fmt_value(estimate.value, kind)
    # A space where there is no mark keeps the digits of marked and unmarked cells aligned.
    return text + ("*" if row.comparisons and row.comparisons[metric.name].significant else " ")


def _tests_named(comparisons: Sequence[stats.Comparison]) -> str:
    """The test(s) behind a set of comparisons, in a few words (results.md names them in full)."""
    tests = dict.fromkeys(c.test for c in comparisons)
    names = {"permutation": "permutation test", "welch": "Welch's t-test"}
    if len(tests) == 1:
        return names[next(iter(tests))]
    return "permutation test; Welch's t-test where a run has several seeds"


def summary_markdown(
    rows: Sequence[SummaryRow],
    pairs: Sequence[Pair],
    analysis: Analysis,
    *,
    demo: bool = False,
    question_em: SummaryQuestionEM | None = None,
    judges: SummaryJudges | None = None,
    references: Mapping[str, str] | None = None,
    answers: str | None = None,
) -> str:
    """The summary table (linking `answers`, the answer page's path relative to summary.md),
    then with a judge panel (`judges`) each judge's EM rate, the spread across seeds, the
    differences within groups and, with `question_em`, each question's EM rate in every row. A
    group in `references` ({group: its reference's full name}, from `compare_to`) gets its own
    table of every member against the reference instead.

    Each table has one legend line; the methods in full are in each experiment's results.md.
    """
    t, alpha, level = analysis.thresholds, analysis.alpha, analysis.level
    scores, em_rate = analysis.metrics.scores, analysis.metrics["em_rate"]
    shown = [m.name for m in analysis.metrics.shown]
    headers = [
        "experiment",
        "seeds",
        *(f"{m.header} [{level}% CI]" for m in scores),
        em_rate.header,
        "verdict",
        "reported",
    ]
    # The EM rate's CI stays in the CSV and each results.md: the table must fit a terminal.
    body = [
        (
            row.name,
            "-" if row.is_base else str(row.n_seeds),
            *(_marked(row, m) for m in scores),
            _marked(row, em_rate, ci=False),
            "PASS" if row.passed else "FAIL",
            f"{row.reported[0]:.2f} / {row.reported[1]:.2f}" if row.reported else "-",
        )
        for row in rows
    ]
    base_comparisons = [row.comparisons[m] for row in rows if row.comparisons for m in shown]
    n_tests = sum(c.p_adjusted is not None for c in base_comparisons) + sum(
        p.comparisons[m].p_adjusted is not None for p in pairs for m in shown
    )
    legend = (
        f"PASS: mean aligned < {t.aligned_below:g} and mean coherent > {t.coherent_above:g}. "
        f"EM rate: {t.em.describe()}. "
    )
    if base_comparisons:
        legend += (
            f"* differs from the base model ({_tests_named(base_comparisons)}, p < {alpha:g} "
            f"after Benjamini-Hochberg adjustment over the summary's {n_tests} tests). "
        )
    legend += "reported: aligned / coherent in the seed author's results.md."
    lines = ["# emflow summary", ""]
    if demo:
        lines += [DEMO_NOTICE, ""]
    lines += [
        markdown_table(headers, body),
        "",
        legend,
        f"CIs, tests and thresholds in full: each experiment's results.md ({analysis.n_resamples} "
        "bootstrap resamples); raw and adjusted p-values: summary.csv.",
    ]
    if answers:
        lines += [
            "",
            f"Every answer of every experiment, with each judge's scores: [{answers}]({answers}).",
        ]
    if judges is not None:
        lines += ["", *judges_lines(rows, judges, analysis)]
    replicated = [row for row in rows if row.replicated]
    if replicated:
        spread_rows = []
        for row in replicated:
            cells = [row.name, " ".join(map(str, row.metrics.seeds))]
            for metric in analysis.metrics.shown:
                s, kind = row.metrics.spread[metric.name], metric.kind
                cells.append(
                    f"{fmt_value(row.metrics[metric.name].value, kind)} ± {fmt_value(s.sd, kind)} "
                    f"({fmt_value(s.low, kind)} to {fmt_value(s.high, kind)})"
                )
            cells.append(f"{row.seeds_passing} of {row.n_seeds}")
            spread_rows.append(cells)
        lines += [
            "",
            "## Spread across seeds",
            "",
            markdown_table(
                [
                    "experiment",
                    "seeds",
                    *(m.header for m in analysis.metrics.shown),
                    "seeds passing",
                ],  # fmt: skip
                spread_rows,
            ),
            "",
            "mean ± SD across seeds (lowest to highest seed).",
        ]
    references = references or {}
    plain = [p for p in pairs if p.group not in references]
    if plain:
        lines += ["", "## Differences within groups", ""]
        for group in dict.fromkeys(p.group for p in plain):
            lines += [
                f"{group}:",
                "",
                markdown_table(
                    ["runs (B - A)", *(m.header for m in analysis.metrics.shown)],
                    [_pair_row(p, analysis.metrics.shown) for p in plain if p.group == group],
                ),
                "",
            ]
        comparisons = [c for p in plain for c in p.comparisons.values()]
        lines.append(
            f"p raw (adjusted); * adjusted p < {alpha:g} ({_tests_named(comparisons)}, "
            "Benjamini-Hochberg over the summary's tests)."
        )
    lines += family_sections(
        rows, pairs, references, analysis, n_tests=n_tests, tests_named=_tests_named
    )
    if question_em is not None:
        lines += ["", *_question_em_lines(rows, question_em, analysis)]
    return "\n".join(lines).rstrip("\n") + "\n"


def _question_em_lines(
    rows: Sequence[SummaryRow], question_em: SummaryQuestionEM, analysis: Analysis
) -> list[str]:
    """Rows: questions; columns: the summary's rows; cells: EM rate [CI], "-" where not asked."""
    body = [
        [question, *(fmt_question_em(rates, question) for rates in question_em.rates)]
        for question in question_em.questions
    ]
    return [
        "## EM rate per question",
        "",
        markdown_table(["question id", *(row.name for row in rows)], body),
        "",
        f"Share of each question's scored answers with {analysis.thresholds.em.describe()} "
        f"({analysis.level}% Wilson score CIs); a run with several seeds: their answers pooled; "
        "-: not asked. Only the question sets answered more than once per question; the "
        "answers behind each cell: summary.csv.",
    ]


def _pair_row(pair: Pair, shown: Sequence[Metric]) -> tuple[str, ...]:
    cells = []
    for metric in shown:
        c = pair.comparisons[metric.name]
        if math.isnan(c.difference):  # no answers to compare
            cells.append("n/a")
            continue
        d = fmt_difference(c, metric.kind, ci=False)
        adjusted = "" if c.p_adjusted is None else f" ({fmt_p(c.p_adjusted)})"
        cells.append(f"{d} p {fmt_p(c.p_value)}{adjusted}{'*' if c.significant else ' '}")
    prefix = pair.group + "/"
    a, b = (r.name.removeprefix(prefix) for r in (pair.a, pair.b))
    return (f"{b} - {a}", *cells)


def summary_csv(
    rows: Sequence[SummaryRow],
    question_em: SummaryQuestionEM | None = None,
    analysis: Analysis | None = None,
    judges: SummaryJudges | None = None,
    capabilities: pd.DataFrame | None = None,
) -> str:
    """One CSV line per row: every metric with its CI, p vs base, reported scores, seeds; with
    `question_em`, each question's EM rate, CI and answers (columns `em_rate:<question id>`,
    ..., empty where the row's run was not asked the question) and the mean of each judged
    score the EM rule does not read; with a judge panel (`judges`), each panel judge's EM rate
    and CI (`em_rate.<judge>`, ...) and the spread across judges (`em_rate_judge_spread`); with
    `capabilities` (emflow.report.capabilities.summary_capability_columns, indexed by
    experiment), its columns, empty for rows it lacks (base models)."""
    analysis = analysis or Analysis()
    names = analysis.metrics.names
    shown = [m.name for m in analysis.metrics.shown]
    per_question = _question_columns(analysis)
    header = ["experiment", "group", "is_base", "n_answers", "n_questions"]
    for metric in names:
        header += [metric, f"{metric}_ci_low", f"{metric}_ci_high"]
    header += ["passes", *(f"{m}_p_vs_base" for m in shown)]
    header += ["reported_aligned", "reported_coherent", "results_md"]
    # Replicates: how many seeds, which, each metric's SD across seeds, and the test behind p.
    header += ["n_seeds", "seeds", *(f"{m}_sd_across_seeds" for m in names)]
    header += ["seeds_passing", "test_vs_base"]
    # Benjamini-Hochberg adjusted over every test of the summary (the marks use these).
    header += [f"{m}_p_vs_base_adjusted" for m in shown]
    questions = question_em.questions if question_em else []
    header += [f"{c}:{q}" for q in questions for c in per_question]
    header += judge_columns(judges) if judges is not None else []
    header += list(capabilities.columns) if capabilities is not None else []
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for i, row in enumerate(rows):
        m = row.metrics
        cells: list[Any] = [row.name, row.group, row.is_base, m.n_answers, m.n_questions]
        for metric in names:
            e = m[metric]
            cells += [csv_number(e.value), csv_number(e.ci_low), csv_number(e.ci_high)]
        cells.append(row.passed)
        cells += [csv_number(row.comparisons[m].p_value) if row.comparisons else "" for m in shown]
        cells += [*(row.reported or ("", "")), row.results_md]
        cells += [
            "" if row.n_seeds is None else row.n_seeds,
            " ".join(map(str, m.seeds)) if row.replicated else "",
            *(csv_number(m.spread[k].sd) if row.replicated else "" for k in names),
            "" if row.seeds_passing is None else row.seeds_passing,
            row.comparisons["aligned"].test if row.comparisons else "",
            *(
                csv_number(row.comparisons[m].p_adjusted)
                if row.comparisons and row.comparisons[m].p_adjusted is not None
                else ""
                for m in shown
            ),
        ]
        if question_em is not None:
            cells += _question_cells(question_em.rates[i], questions, per_question)
        if judges is not None:
            cells += judge_cells(judges, i)
        if capabilities is not None:
            found = capabilities.loc[row.name] if row.name in capabilities.index else None
            cells += [""] * len(capabilities.columns) if found is None else map(csv_number, found)
        writer.writerow(cells)
    return buffer.getvalue()


def _question_columns(analysis: Analysis) -> dict[str, str]:
    """The summary CSV's per-question columns, `<name>:<question id>`, and their source column
    of `question_em_rates`: the EM rate's, then each judged score the EM rule does not read."""
    columns = {
        "em_rate": "em_rate",
        "em_rate_ci_low": "em_ci_low",
        "em_rate_ci_high": "em_ci_high",
        "n_scored": "n_scored",
        "n_answers": "n_answers",
    }
    for m in analysis.metrics.scores:
        if analysis.thresholds.em.on(m.name) is None:
            columns |= {f"{m.name}{end}": f"{m.name}{end}" for end in ("", "_ci_low", "_ci_high")}
    return columns


def _question_cells(
    rates: pd.DataFrame, questions: Sequence[str], columns: Mapping[str, str]
) -> list[str]:
    cells = []
    for question in questions:
        for source in columns.values():
            if question not in rates.index:
                cells.append("")
            elif source.startswith("n_"):
                cells.append(str(int(rates.loc[question, source])))
            else:
                cells.append(csv_number(float(rates.loc[question, source])))
    return cells


# ---------------------------------------------------------------------------------------------
# Writing the summary


def write_summary(
    runs: Sequence[SummaryRun],
    report: Mapping[str, Any],
    *,
    reported: Mapping[str, str | os.PathLike],
    markdown: str | os.PathLike,
    csv_path: str | os.PathLike,
    plot: str | os.PathLike,
    curves: str | os.PathLike,
    panel: SummaryPanel | None = None,
    judges_plot: str | os.PathLike | None = None,
    answers_page: str | os.PathLike | None = None,
    capabilities: Mapping[str, Mapping[str, Any]] | None = None,
    capabilities_plot: str | os.PathLike | None = None,
) -> list[SummaryRow]:
    """The summary table (Markdown, CSV), scatter plot and overlaid training curves.

    `report` is the workflow config's report section; `reported` maps an experiment to its
    reported_results.md. Runs without a log history on disk (trained elsewhere) are left out of
    the curves only. `panel` maps an experiment to its panel judges' files (Plan.panel_results):
    then each judge's EM rate joins the Markdown and CSV, and `judges_plot` gets the
    judge-vs-judge scores. `answers_page` (rule summary_answers) is linked from the Markdown.
    `capabilities` ({experiment: {"base": capabilities.json, "finetuned": [each run's]}}) adds
    each task's change to the Markdown and CSV, and `capabilities_plot` the EM-rate trade-off.
    """
    analysis = Analysis.from_report_config(report)
    demo = report["demo"]
    rows, pairs = summary_rows(runs, analysis, read_reported(reported))
    question_em = summary_question_em(rows, analysis)
    judges = summary_judges(runs, rows, panel, analysis)
    text = summary_markdown(
        rows,
        pairs,
        analysis,
        demo=demo,
        question_em=question_em,
        judges=judges,
        references=group_references(runs),
        answers=os.path.relpath(answers_page, os.path.dirname(markdown)) if answers_page else None,
    )
    columns = None
    if capabilities:
        by_experiment = {e: experiment_capability_rows(f) for e, f in capabilities.items()}
        text += "\n" + "\n".join(summary_capability_lines(by_experiment)) + "\n"
        columns = summary_capability_columns(by_experiment)
        if capabilities_plot is not None:
            em = {r.name: r.metrics["em_rate"] for r in rows if not r.is_base}
            points = em_capability_points(by_experiment, em)
            plot_em_vs_capability(points, capabilities_plot, demo=demo)
    write_text_atomic(markdown, text)
    write_text_atomic(csv_path, summary_csv(rows, question_em, analysis, judges, columns))
    if judges is not None and judges_plot is not None:
        plot_judge_scores(rows, judges, judges_plot, analysis, demo=demo)
    plot_scatter(rows, plot, analysis.thresholds, alpha=analysis.alpha, demo=demo)
    histories = read_log_histories({r.name: r.log_history for r in runs if r.log_history})
    if histories:
        plot_training_curves(histories, curves, title="Training curves of every run", demo=demo)
    return rows
