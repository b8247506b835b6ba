"""Agreement between judges of the same answers: each judge's metrics, and per pair of judges
Krippendorff's alpha on each score, Cohen's kappa and the confusion of the EM label, and the
answers they disagree on most. Numbers only; results.md renders them.

The statistics are the maintained implementations (`krippendorff.alpha`, interval level;
`sklearn.metrics.cohen_kappa_score`), not our own. An answer a judge could not score (CODE,
REFUSAL or an unusable reply) has no value for that judge, so it is left out of every pair's
numbers that need it: alpha on a metric counts the answers both judges scored on that metric;
kappa and the confusion count the answers both judges have an EM label for.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import krippendorff
import numpy as np
import pandas as pd
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import cohen_kappa_score

from emflow.errors import EmflowError
from emflow.report import stats
from emflow.report.analysis import Analysis, JudgedRun
from emflow.report.metrics import MetricSet

PRIMARY = "primary"
# How many of the answers a pair disagrees on most results.md lists.
TOP_DISAGREEMENTS = 5
AGREEMENT_NOTE = (
    "Krippendorff's alpha (interval; the `krippendorff` package) on each score and Cohen's kappa "
    "(scikit-learn) of the EM label, over the base model's and every fine-tuned run's answers "
    "pooled; an answer either judge could not score (CODE, REFUSAL, invalid) is left out of that "
    "pair's numbers"
)


@dataclass(frozen=True)
class JudgeMetrics:
    """One judge's metrics of the base model and the fine-tuned run (as results.md's table)."""

    name: str
    base: stats.RunMetrics | stats.ReplicateMetrics
    finetuned: stats.RunMetrics | stats.ReplicateMetrics


@dataclass(frozen=True)
class PairAgreement:
    """Two judges' agreement on the answers both judged (joined on target and `id`).

    `alpha` and `n` map each judged score to Krippendorff's alpha and the answers it counts;
    `confusion[i][j]` counts the answers judge `a` labels i and judge `b` labels j (0: not EM,
    1: EM); `disagreements` the answers with the largest absolute aligned difference.
    """

    a: str
    b: str
    alpha: dict[str, float]
    n: dict[str, int]
    kappa: float
    n_em: int
    confusion: np.ndarray
    disagreements: pd.DataFrame


@dataclass(frozen=True)
class PanelAgreement:
    """Every judge's metrics (the primary first) and every pair's agreement."""

    judges: list[JudgeMetrics]
    pairs: list[PairAgreement]
    metrics: MetricSet


def interval_alpha(a: np.ndarray, b: np.ndarray) -> float:
    """Krippendorff's alpha (interval) of two judges' scores of the same answers; NaN where it is
    undefined (fewer than two answers, or a single value in all of them)."""
    data = np.vstack([a, b]).astype(float)
    if data.shape[1] < 2 or len(np.unique(data[~np.isnan(data)])) < 2:
        return float("nan")
    return float(krippendorff.alpha(reliability_data=data, level_of_measurement="interval"))


def em_kappa(a: np.ndarray, b: np.ndarray) -> float:
    """Cohen's kappa of two judges' EM labels (0/1); NaN where undefined (one label only)."""
    if len(a) == 0:
        return float("nan")
    with warnings.catch_warnings():
        # Undefined kappa is reported as NaN (a table cell "-"), which is the answer, not a fault.
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        return float(cohen_kappa_score(a.astype(int), b.astype(int), labels=[0, 1]))


def em_confusion(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The 2x2 counts of (judge a's label, judge b's label), 0: not EM, 1: EM."""
    out = np.zeros((2, 2), dtype=int)
    np.add.at(out, (a.astype(int), b.astype(int)), 1)
    return out


def _answers(run: JudgedRun, judge: str, analysis: Analysis) -> pd.DataFrame:
    """One judge's answers of one run, one row per (target, id): raw score cells and values."""
    targets = run.frames if run.replicated else {None: run.frames}
    metrics = analysis.metrics
    parts = []
    for seed, df in targets.items():
        ids = df["id"].astype(str)
        if ids.duplicated().any():
            raise EmflowError(
                f"judge {judge}: id {ids[ids.duplicated()].iloc[0]!r} appears twice in one judged "
                "CSV; give every answer its own id (regenerate the answers)."
            )
        values = stats.per_answer_values(df, analysis.thresholds.em, metrics)
        part = pd.DataFrame(values, columns=list(metrics.names))
        for m in metrics.scores:
            part[f"{m.name}_cell"] = df[m.column].to_numpy()
        part.insert(0, "id", ids.to_numpy())
        part.insert(0, "seed", seed)
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def _judge_answers(base: JudgedRun, tuned: JudgedRun, judge: str, analysis: Analysis):
    frames = []
    for target, run in (("base model", base), ("fine-tuned", tuned)):
        part = _answers(run, judge, analysis)
        part.insert(0, "target", target)
        frames.append(part)
    return pd.concat(frames, ignore_index=True)


def pair_agreement(
    a: str, left: pd.DataFrame, b: str, right: pd.DataFrame, analysis: Analysis, top: int
) -> PairAgreement:
    """Agreement of judges a and b from their `_judge_answers` frames, joined on the answer."""
    keys = ["target", "seed", "id"]
    # The seed key is None for a single run; a join on None would drop those rows.
    joined = left.fillna({"seed": -1}).merge(
        right.fillna({"seed": -1}), on=keys, how="inner", suffixes=("_a", "_b")
    )
    alpha, n = {}, {}
    for m in analysis.metrics.scores:
        x, y = joined[f"{m.name}_a"].to_numpy(), joined[f"{m.name}_b"].to_numpy()
        both = ~np.isnan(x) & ~np.isnan(y)
        alpha[m.name], n[m.name] = interval_alpha(x[both], y[both]), int(both.sum())
    x, y = joined["em_rate_a"].to_numpy(), joined["em_rate_b"].to_numpy()
    both = ~np.isnan(x) & ~np.isnan(y)
    # Every metric set has aligned (the EM rule reads it); answers scored alike are not listed.
    gap = (joined["aligned_a"] - joined["aligned_b"]).abs()
    order = gap[gap > 0].sort_values(ascending=False, kind="stable").index[:top]
    cells = [f"{m.name}_cell_{side}" for m in analysis.metrics.scores for side in ("a", "b")]
    worst = joined.loc[order, ["target", "seed", "id", *cells]].reset_index(drop=True)
    worst["seed"] = worst["seed"].where(worst["seed"] != -1, None)
    worst.insert(3, "difference", gap.loc[order].to_numpy())
    return PairAgreement(
        a, b, alpha, n, em_kappa(x[both], y[both]), int(both.sum()),
        em_confusion(x[both], y[both]), worst,
    )  # fmt: skip


def panel_agreement(
    runs: Mapping[str, tuple[JudgedRun, JudgedRun]],
    analysis: Analysis,
    top: int = TOP_DISAGREEMENTS,
) -> PanelAgreement:
    """Each judge's metrics and each pair's agreement; `runs` maps a judge's name to its
    (base model, fine-tuned) runs of the same answers, the primary first."""
    judges = [
        JudgeMetrics(name, base.metrics, tuned.metrics) for name, (base, tuned) in runs.items()
    ]
    answers = {name: _judge_answers(*pair, name, analysis) for name, pair in runs.items()}
    pairs = [
        pair_agreement(a, answers[a], b, answers[b], analysis, top)
        for a, b in itertools.combinations(answers, 2)
    ]
    return PanelAgreement(judges, pairs, analysis.metrics)
