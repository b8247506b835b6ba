"""Each question's EM rate and mean scores (Betley et al. 2025, Fig. 2; Model Organisms for EM),
for the question sets answered several times per question."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from emflow.report.metrics import DEFAULT_METRICS, PAPER_EM_RULE, EMRule, MetricSet
from emflow.report.stats import mean_across_seeds, per_answer_values, question_keys

QUESTION_EM_INTERVAL = (
    "Wilson score interval for a binomial proportion (each scored answer an independent draw)"
)
QUESTION_MEAN_INTERVAL = "Student t interval of the mean (each scored answer an independent draw)"


def question_em_columns(metrics: MetricSet = DEFAULT_METRICS) -> tuple[str, ...]:
    """The columns of `question_em_rates`, in order: the EM rate's, then each judged score's
    mean with its interval."""
    scores = [f"{m.name}{end}" for m in metrics.scores for end in ("", "_ci_low", "_ci_high")]
    return ("question_set", "n_answers", "n_scored", "n_em", "em_rate", "em_ci_low",
            "em_ci_high", *scores)  # fmt: skip


def wilson_interval(
    successes: np.ndarray | float, trials: np.ndarray | float, confidence: float = 0.95
) -> tuple[np.ndarray, np.ndarray]:
    """The Wilson score interval of `successes` out of `trials`; NaN where `trials` is 0.

    Chosen over the normal (Wald) interval for per-question rates: with tens of answers and
    rates near 0 or 1 the Wald interval collapses to a point (0 of 50 gives [0, 0]); Wilson's
    stays inside [0, 1] and keeps its coverage.
    """
    k = np.asarray(successes, dtype=float)
    n = np.asarray(trials, dtype=float)
    z = float(scipy_stats.norm.ppf(0.5 + confidence / 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        denominator = 1 + z**2 / n
        center = (p + z**2 / (2 * n)) / denominator
        half = z / denominator * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    low = np.where(n > 0, np.clip(center - half, 0.0, 1.0), np.nan)
    high = np.where(n > 0, np.clip(center + half, 0.0, 1.0), np.nan)
    return low, high


def _frame_list(
    frames: pd.DataFrame | Sequence[pd.DataFrame] | Mapping[Any, pd.DataFrame],
) -> list[pd.DataFrame]:
    if isinstance(frames, pd.DataFrame):
        return [frames]
    return list(frames.values()) if isinstance(frames, Mapping) else list(frames)


def _question_sets(df: pd.DataFrame) -> np.ndarray:
    """Each answer's question set: the `question_set` column where there is one, else ""."""
    if "question_set" in df.columns:
        return df["question_set"].astype(str).to_numpy()
    return np.full(len(df), "", dtype=object)


def question_em_rates(
    frames: pd.DataFrame | Sequence[pd.DataFrame] | Mapping[Any, pd.DataFrame],
    *,
    em: EMRule = PAPER_EM_RULE,
    metrics: MetricSet = DEFAULT_METRICS,
    confidence: float = 0.95,
    group_by: str | None = None,
) -> pd.DataFrame:
    """Each question's EM rate with its Wilson interval, its answers, and each judged score's
    mean with its Student t interval.

    One row per question (`question_keys`: `question_id` where there is one), in the order the
    questions first appear; the columns are `question_em_columns(metrics)`. `frames` is one
    judged frame, or several (the seeds of a run with replicates), whose answers are pooled per
    question: the interval then counts every seed's answers as independent draws, so it leaves
    out the spread across seeds.

    Answers count as the overall EM rate counts them (`per_answer_values`): `n_scored` answers
    have a number in every score the EM rule reads and make the denominator, `n_em` of them the
    rule counts; CODE, REFUSAL and unscored answers are in `n_answers` only. Each mean score is
    over the question's numeric cells of that score. A question without scored answers has NaN
    rate.
    """
    frames = _frame_list(frames)
    pooled = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if pooled.empty:
        empty = pd.DataFrame(columns=list(question_em_columns(metrics)))
        empty.index.name = "question_id"
        return empty
    values = per_answer_values(pooled, em, metrics)
    keys = question_keys(pooled, group_by)
    order = pd.unique(keys)
    scores = {m.name: values[:, metrics.index(m.name)] for m in metrics.scores}
    by_question = pd.DataFrame(
        {
            "question_set": _question_sets(pooled),
            **scores,
            "em": values[:, metrics.index("em_rate")],
        }
    ).groupby(keys, sort=False)
    n_scored = by_question["em"].count().reindex(order).to_numpy()
    n_em = by_question["em"].sum().reindex(order).to_numpy()
    low, high = wilson_interval(n_em, n_scored, confidence)
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(n_scored > 0, n_em / np.maximum(n_scored, 1), np.nan)
    columns: dict[str, Any] = {
        "question_set": by_question["question_set"].first().reindex(order).to_numpy(),
        "n_answers": by_question.size().reindex(order).to_numpy(),
        "n_scored": n_scored.astype(int),
        "n_em": n_em.astype(int),
        "em_rate": rate,
        "em_ci_low": low,
        "em_ci_high": high,
    }
    for metric in metrics.scores:
        columns[metric.name] = by_question[metric.name].mean().reindex(order).to_numpy()
        by_key = {
            key: mean_across_seeds(group.to_numpy(), confidence, metric.bounds)[0]
            for key, group in by_question[metric.name]
        }
        columns[f"{metric.name}_ci_low"] = [by_key[k].ci_low for k in order]
        columns[f"{metric.name}_ci_high"] = [by_key[k].ci_high for k in order]
    return pd.DataFrame(columns, index=pd.Index(order, name="question_id"))


def multi_sample_questions(
    frames: pd.DataFrame | Sequence[pd.DataFrame] | Mapping[Any, pd.DataFrame],
    group_by: str | None = None,
) -> list[str]:
    """The questions of every question set that some judged CSV answered more than once per
    question, in the order they first appear in `frames`.

    Each frame is one judged CSV (one target, or one seed of a run with replicates) and is
    counted on its own, so one answer per question from each of several seeds is not a
    multi-sample set. Sets are told apart by the `question_set` column; without it a CSV is one
    set.
    """
    frames = _frame_list(frames)
    multi: set[str] = set()
    for df in frames:
        counts = pd.Series(1, index=[_question_sets(df), question_keys(df, group_by)])
        sizes = counts.groupby(level=[0, 1]).size()
        multi |= set(sizes[sizes > 1].index.get_level_values(0))
    questions: dict[str, None] = {}
    for df in frames:
        sets, keys = _question_sets(df), question_keys(df, group_by)
        questions |= dict.fromkeys(k for s, k in zip(sets, keys, strict=True) if s in multi)
    return list(questions)
