"""The numbers every report shows, read once: judged runs as typed objects, their metrics and
comparisons, each question's EM rate, and the rows of the summary. No text is written here; the
documents (`results`, `summary`, `sweeps`) render these objects.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pandas as pd

from emflow.report import stats
from emflow.report.judged import (
    Judged,
    JudgedSeeds,
    homework_averages,
    homework_rows,
    judged_frame,
    verdict,
)
from emflow.report.metrics import DEFAULT_METRICS, MetricSet
from emflow.report.per_question import multi_sample_questions, question_em_rates
from emflow.report.settings import ReportSettings, Thresholds


@dataclass(frozen=True)
class Analysis:
    """How runs are measured and compared: thresholds, CI level, bootstrap size and seed, how
    many rows of each judged CSV to keep (`rows`; the homework keeps 20) and which metrics."""

    thresholds: Thresholds = field(default_factory=Thresholds)
    alpha: float = 0.05
    n_resamples: int = 10_000
    seed: int = 0
    rows: int | None = None
    # The question sets of the homework's protocol (the .txt sets): the seed-format blocks and
    # the verdict are computed over their rows only, when a judged CSV names its sets; empty:
    # over every row.
    homework_sets: tuple[str, ...] = ()
    metrics: MetricSet = DEFAULT_METRICS

    @classmethod
    def from_report_config(cls, report: Mapping[str, Any]) -> Analysis:
        """From `emflow.report.settings.report_settings`'s dict (a job's `params.report`)."""
        return cls.from_settings(ReportSettings.from_params(report))

    @classmethod
    def from_settings(cls, settings: ReportSettings) -> Analysis:
        return cls(
            settings.threshold_set(),
            n_resamples=settings.bootstrap_resamples,
            homework_sets=settings.homework_sets,
            metrics=settings.metric_set,
        )

    @property
    def level(self) -> int:
        """The CI level in percent, e.g. 95."""
        return round(100 * (1 - self.alpha))

    def options(self) -> dict[str, Any]:
        """The keyword arguments `stats.run_metrics` and `stats.compare_runs` share."""
        return dict(
            em=self.thresholds.em,
            metrics=self.metrics,
            n_resamples=self.n_resamples,
            seed=self.seed,
        )


@dataclass(frozen=True)
class JudgedRun:
    """A run's judged answers and metrics; for an experiment with replicates, each seed's."""

    frames: pd.DataFrame | dict[int, pd.DataFrame]
    metrics: stats.RunMetrics | stats.ReplicateMetrics
    homework_sets: tuple[str, ...] = ()  # see Analysis.homework_sets

    @property
    def replicated(self) -> bool:
        return isinstance(self.metrics, stats.ReplicateMetrics)

    @property
    def n_seeds(self) -> int:
        return len(self.metrics.per_seed) if self.replicated else 1

    def frame_list(self) -> list[pd.DataFrame]:
        """The judged frames: the run's one, or each seed's in the order of its seeds."""
        return list(self.frames.values()) if self.replicated else [self.frames]

    def seed_averages(self, rule: str = "each") -> dict[int, tuple[float, float]]:
        """Each training seed's homework averages (a single run: its own, under its key 0);
        `rule`: the homework's FINETUNED line ("each", a fine-tuned run's) or its BASE MODEL
        line ("both", the base model's); see emflow.report.judged.HOMEWORK_RULES."""
        frames = self.frames if self.replicated else {0: self.frames}
        return {
            seed: homework_averages(homework_rows(df, self.homework_sets), rule=rule)
            for seed, df in frames.items()
        }

    def homework_means(self, rule: str = "each") -> tuple[float, float]:
        """The homework's averages; for replicates, the mean over seeds of each seed's own."""
        per_seed = [m for m in self.seed_averages(rule).values() if not math.isnan(m[0])]
        if not per_seed:
            return float("nan"), float("nan")
        return (
            sum(a for a, _ in per_seed) / len(per_seed),
            sum(c for _, c in per_seed) / len(per_seed),
        )

    def passes(self, thresholds: Thresholds, rule: str = "each") -> bool:
        """The verdict on the homework's averages (the two blocks of results.md)."""
        return verdict(*self.homework_means(rule), thresholds)[0]

    def seeds_passing(self, thresholds: Thresholds) -> int | None:
        """How many seeds pass the thresholds on their own (None for a single run)."""
        if not self.replicated:
            return None
        return sum(verdict(*m, thresholds)[0] for m in self.seed_averages().values())


def load_run(judged: Judged | JudgedSeeds, analysis: Analysis) -> JudgedRun:
    """A run's judged frame and metrics, or for replicates ({seed: judged}) each seed's."""
    confidence = 1 - analysis.alpha
    read = dict(rows=analysis.rows, metrics=analysis.metrics)
    if isinstance(judged, Mapping):
        frames = {int(seed): judged_frame(path, **read) for seed, path in judged.items()}
        metrics = stats.replicate_metrics(frames, confidence=confidence, **analysis.options())
        return JudgedRun(frames, metrics, analysis.homework_sets)
    df = judged_frame(judged, **read)
    metrics = stats.run_metrics(df, confidence=confidence, **analysis.options())
    return JudgedRun(df, metrics, analysis.homework_sets)


def compare(a: JudgedRun, b: JudgedRun, analysis: Analysis) -> dict[str, stats.Comparison]:
    """Run b against run a: the permutation test for two single runs, Welch's t-test on the means
    where either has several seeds (pooling seeds' answers would count their spread as signal)."""
    if a.replicated or b.replicated:
        return stats.compare_estimates(a.metrics, b.metrics, analysis.alpha)
    return stats.compare_runs(a.frames, b.frames, alpha=analysis.alpha, **analysis.options())


def question_rates(frame_lists: Sequence[Sequence[pd.DataFrame]], analysis: Analysis):
    """Each run's per-question EM rates (`question_em_rates`; a run's several frames pooled) on
    the questions some frame answered more than once, and those questions in order of first
    appearance; None when no question was answered twice."""
    questions = multi_sample_questions([df for frames in frame_lists for df in frames])
    if not questions:
        return None
    options = dict(
        em=analysis.thresholds.em, metrics=analysis.metrics, confidence=1 - analysis.alpha
    )
    rates = []
    for frames in frame_lists:
        table = question_em_rates(list(frames), **options)
        rates.append(table[table.index.isin(questions)])
    return questions, rates


# ---------------------------------------------------------------------------------------------
# One experiment against its base model (results.md)


@dataclass(frozen=True)
class QuestionEM:
    """Each question's EM rate (`question_em_rates`) of the base model and the fine-tuned run,
    on the question sets answered several times per question.

    `questions` is the table's row order: as the questions first appear in the fine-tuned run's
    judged CSV (its first seed's first), then any that only the base model was asked. A question
    one target was not asked has no row in that target's frame; it is shown as not asked ("-")
    and never counted as 0 EM answers.
    """

    questions: list[str]
    base: pd.DataFrame
    finetuned: pd.DataFrame

    def targets(self, tuned_label: str = "fine-tuned") -> dict[str, pd.DataFrame]:
        """{"base model": its rates, `tuned_label`: the fine-tuned run's}, for the figure."""
        return {"base model": self.base, tuned_label: self.finetuned}


def question_em(base: JudgedRun, tuned: JudgedRun, analysis: Analysis) -> QuestionEM | None:
    """Per-question EM rates of both runs (a run with replicates: its seeds' answers pooled per
    question), or None when no judged CSV answers any question more than once."""
    found = question_rates([tuned.frame_list(), base.frame_list()], analysis)
    if found is None:
        return None
    questions, (tuned_rates, base_rates) = found
    return QuestionEM(questions, base_rates, tuned_rates)


@dataclass(frozen=True)
class ExperimentResults:
    """Everything results.md says about one experiment against its base model."""

    base: JudgedRun
    finetuned: JudgedRun
    comparisons: dict[str, stats.Comparison]
    # Each seed of an experiment with replicates against the base model, by permutation test.
    seed_comparisons: dict[int, dict[str, stats.Comparison]] | None
    analysis: Analysis
    # Each question's EM rate; None unless some question was answered more than once.
    question_em: QuestionEM | None = None

    @property
    def passed(self) -> bool:
        return verdict(*self.finetuned.homework_means(), self.analysis.thresholds)[0]


def experiment_results(
    base: Judged, finetuned: Judged | JudgedSeeds, analysis: Analysis
) -> ExperimentResults:
    """Load both runs, measure them and compare the fine-tuned model with the base model.

    `finetuned` maps each training seed to its judged CSV for an experiment with replicates.
    """
    base_run = load_run(base, analysis)
    tuned = load_run(finetuned, analysis)
    seed_comparisons = None
    if tuned.replicated:
        seed_comparisons = {
            seed: stats.compare_runs(
                base_run.frames, df, alpha=analysis.alpha, **analysis.options()
            )
            for seed, df in tuned.frames.items()
        }
    return ExperimentResults(
        base_run,
        tuned,
        compare(base_run, tuned, analysis),
        seed_comparisons,
        analysis,
        question_em(base_run, tuned, analysis),
    )


# ---------------------------------------------------------------------------------------------
# Every experiment (the summary)


@dataclass(frozen=True)
class SummaryRun:
    """One experiment in the summary: its judged CSV (or {training seed: judged CSV} for an
    experiment with replicates), its base model's judged CSV, and where its results.md is."""

    name: str
    judged: str | Mapping[int, str]
    base_judged: str | None = None
    base_name: str = "base model"
    results_md: str = ""
    log_history: str | Mapping[int, str] | None = None
    # The experiment (full name, of the same group) this one's difference is taken from, or
    # None (the experiment config's `compare_to`).
    compare_to: str | None = None

    @property
    def group(self) -> str:
        """Runs of one group are compared pairwise: the name up to its last `/`."""
        return self.name.rsplit("/", 1)[0] if "/" in self.name else ""

    def files(self) -> list[str]:
        """Every judged CSV and log history this run's summary row reads."""
        return [
            str(path)
            for value in (self.judged, self.log_history)
            for path in (value.values() if isinstance(value, Mapping) else [value] if value else [])
        ]


@dataclass(frozen=True)
class SummaryRow:
    """A row of the summary table: an experiment, or a base model (`is_base`)."""

    name: str
    group: str
    is_base: bool
    run: JudgedRun
    passed: bool
    comparisons: dict[str, stats.Comparison] | None
    reported: tuple[float, float] | None
    results_md: str
    seeds_passing: int | None

    @property
    def metrics(self) -> stats.RunMetrics | stats.ReplicateMetrics:
        return self.run.metrics

    @property
    def replicated(self) -> bool:
        return self.run.replicated

    @property
    def n_seeds(self) -> int | None:
        return None if self.is_base else self.run.n_seeds


@dataclass(frozen=True)
class Pair:
    """Two experiments of one group compared: b - a."""

    group: str
    a: SummaryRow
    b: SummaryRow
    comparisons: dict[str, stats.Comparison]


def summary_rows(
    runs: Sequence[SummaryRun],
    analysis: Analysis,
    reported: Mapping[str, tuple[float, float]] | None = None,
) -> tuple[list[SummaryRow], list[Pair]]:
    """Measure every run and base model, compare each run with its base model and the runs of
    each group pairwise. `reported` maps an experiment (or base row) name to the seed author's
    (aligned, coherent)."""
    t, reported = analysis.thresholds, dict(reported or {})
    bases: dict[tuple[str, str], SummaryRow] = {}
    table: list[SummaryRow] = []
    for run in runs:
        base_key = None
        if run.base_judged:
            base_key = (run.base_name, str(run.base_judged))
            if base_key not in bases:
                base = load_run(run.base_judged, analysis)
                bases[base_key] = SummaryRow(
                    name=run.base_name,
                    group="",
                    is_base=True,
                    run=base,
                    passed=base.passes(t, rule="both"),
                    comparisons=None,
                    reported=reported.get(run.base_name),
                    results_md="",
                    seeds_passing=None,
                )
        judged = load_run(run.judged, analysis)
        comparisons = compare(bases[base_key].run, judged, analysis) if base_key else None
        table.append(
            SummaryRow(
                name=run.name,
                group=run.group,
                is_base=False,
                run=judged,
                passed=judged.passes(t),
                comparisons=comparisons,
                reported=reported.get(run.name),
                results_md=run.results_md,
                seeds_passing=judged.seeds_passing(t),
            )
        )
    pairs = []
    by_group: dict[str, list[SummaryRow]] = {}
    for row in table:
        if row.group:
            by_group.setdefault(row.group, []).append(row)
    for group, members in by_group.items():
        for a, b in _group_pairs(members, {r.name: r.compare_to for r in runs}):
            pairs.append(Pair(group, a, b, compare(a.run, b.run, analysis)))
    return _adjusted([*bases.values(), *table], pairs, analysis.metrics)


def _group_pairs(
    members: list[SummaryRow], compare_to: Mapping[str, str | None]
) -> list[tuple[SummaryRow, SummaryRow]]:
    """The pairs (A, B) of one group the summary compares: each member with the experiment it
    names in `compare_to` (the reference first) when some member names one, else every pair in
    table order."""
    if not any(compare_to.get(m.name) for m in members):
        return [(a, b) for i, a in enumerate(members) for b in members[i + 1 :]]
    by_name = {m.name: m for m in members}
    return [
        (by_name[compare_to[b.name]], b)
        for b in members
        if compare_to.get(b.name) in by_name  # a reference not judged yet: no pair
    ]


def _adjusted(
    rows: list[SummaryRow], pairs: list[Pair], metrics: MetricSet
) -> tuple[list[SummaryRow], list[Pair]]:
    """Rows and pairs with Benjamini-Hochberg adjusted p-values over every test the summary
    shows (each run against its base model and each pair, on each metric of its tables), so that
    its marks hold for the family rather than one test at a time."""
    shown = [m.name for m in metrics.shown]
    family = [c[m] for c in [r.comparisons for r in rows if r.comparisons] for m in shown]
    family += [p.comparisons[m] for p in pairs for m in shown]
    adjusted = iter(stats.adjust_p_values(family))

    def take(comparisons: dict[str, stats.Comparison]) -> dict[str, stats.Comparison]:
        return comparisons | {m: next(adjusted) for m in shown}

    rows = [replace(r, comparisons=take(r.comparisons)) if r.comparisons else r for r in rows]
    pairs = [replace(p, comparisons=take(p.comparisons)) for p in pairs]
    return rows, pairs


@dataclass(frozen=True)
class SummaryQuestionEM:
    """Each summary row's per-question EM rates (`question_em_rates`; a run with replicates: its
    seeds' answers pooled), `rates[i]` for row i, on `questions`: the question sets some judged
    CSV answered more than once per question, in order of first appearance. A question a row's
    run was not asked has no line in its frame (shown as "-", never as 0)."""

    questions: list[str]
    rates: list[pd.DataFrame]


def summary_question_em(rows: Sequence[SummaryRow], analysis: Analysis) -> SummaryQuestionEM | None:
    """The per-question EM rates of every row, or None when no question was answered twice."""
    found = question_rates([row.run.frame_list() for row in rows], analysis)
    return None if found is None else SummaryQuestionEM(*found)
