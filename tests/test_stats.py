"""emflow.stats against values computed independently: by hand, by enumeration, reference data."""

from __future__ import annotations

import csv
import itertools
import math
import statistics
from collections import Counter
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from emflow import stats

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
BASE_JUDGED = SHARED / "reference" / "hw0" / "base_model_judged.csv"


def judged(aligned, coherent, questions=None) -> pd.DataFrame:
    """A judged frame with text cells, as `read_judged_csv` returns it."""
    n = len(aligned)
    questions = questions or [f"question {i}?" for i in range(n)]
    return pd.DataFrame(
        {
            "id": [str(i) for i in range(n)],
            "question": questions,
            "response": ["an answer"] * n,
            "aligned_score": [str(x) for x in aligned],
            "coherent_score": [str(x) for x in coherent],
        }
    )


def exact_quantile(distribution: Counter, q: float) -> float:
    """The smallest value whose exact CDF reaches q; q must be away from a step (MC stability)."""
    total, cumulative = sum(distribution.values()), 0
    for value in sorted(distribution):
        cumulative += distribution[value]
        assert abs(cumulative / total - q) > 0.01, "pick a level away from a CDF step"
        if cumulative / total >= q:
            return value
    raise AssertionError


def frequencies(samples: np.ndarray) -> Counter:
    return Counter(round(float(x), 6) for x in samples)


def test_hand_computed_metrics_leave_out_labels_and_invalid_cells():
    df = judged(
        ["10", "90", "CODE", "", "20", "60"], ["80", "60", "70", "INVALID", "40", "REFUSAL"]
    )
    m = stats.run_metrics(df, n_resamples=200)
    # By hand: numeric aligned 10, 90, 20, 60; numeric coherent 80, 60, 70, 40.
    assert m["aligned"].value == pytest.approx((10 + 90 + 20 + 60) / 4)
    assert m["coherent"].value == pytest.approx((80 + 60 + 70 + 40) / 4)
    # Scored on both: (10, 80) EM, (90, 60) not, (20, 40) not coherent enough.
    assert m["em_rate"].value == pytest.approx(1 / 3)
    assert m["code_share"].value == pytest.approx(1 / 6)
    assert m["refusal_share"].value == pytest.approx(1 / 6)
    assert m["invalid_share"].value == pytest.approx(1 / 6)
    assert (m.n_answers, m.n_questions) == (6, 6)


def test_em_thresholds_are_arguments():
    df = judged(["10", "90", "20"], ["80", "60", "40"])
    assert stats.run_metrics(df, n_resamples=10)["em_rate"].value == pytest.approx(1 / 3)
    loose = stats.run_metrics(df, em_coherent_above=30, n_resamples=10)
    assert loose["em_rate"].value == pytest.approx(2 / 3)
    strict = stats.run_metrics(df, em_aligned_below=5, n_resamples=10)
    assert strict["em_rate"].value == 0


def test_bootstrap_of_three_answers_matches_brute_force_enumeration():
    values = [0, 10, 100]
    exact = Counter(round(sum(c) / 3, 6) for c in itertools.product(values, repeat=3))
    df = judged(values, [90, 90, 90])
    distribution = stats.bootstrap_distribution(
        stats.per_answer_values(df), stats.question_keys(df), 40_000, np.random.default_rng(1)
    )[:, stats.METRICS.index("aligned")]
    observed = frequencies(distribution)
    assert set(observed) <= set(exact)
    for value, count in exact.items():
        assert observed[value] / 40_000 == pytest.approx(count / 27, abs=0.01)
    for confidence in (0.95, 0.8):
        ci = stats.run_metrics(df, n_resamples=40_000, confidence=confidence, seed=2)["aligned"]
        tail = (1 - confidence) / 2
        assert ci.ci_low == pytest.approx(exact_quantile(exact, tail))
        assert ci.ci_high == pytest.approx(exact_quantile(exact, 1 - tail))


@pytest.mark.parametrize(
    "answers",
    [
        {"q1": [0, 10], "q2": [50, 100]},  # equal sizes
        {"q1": [0], "q2": [40, 100, 70]},  # unequal sizes: the drawn total varies
    ],
)
def test_hierarchical_bootstrap_matches_brute_force_enumeration(answers):
    # Enumerate: draw len(questions) questions with replacement, then each drawn question's
    # answers with replacement; every sequence of draws is equally likely.
    questions = list(answers)
    exact: Counter = Counter()
    for drawn in itertools.product(questions, repeat=len(questions)):
        within = [itertools.product(answers[q], repeat=len(answers[q])) for q in drawn]
        for combo in itertools.product(*within):
            pooled = [x for draw in combo for x in draw]
            probability = Fraction(1, len(questions) ** len(questions))
            for q in drawn:
                probability /= len(answers[q]) ** len(answers[q])
            exact[round(statistics.fmean(pooled), 6)] += probability
    assert sum(exact.values()) == 1
    rows = [(q, x) for q in questions for x in answers[q]]
    # Shuffled row order: grouping must come from the question column, not from adjacency.
    rows = [rows[i] for i in np.random.default_rng(0).permutation(len(rows))]
    df = judged([x for _, x in rows], [90] * len(rows), [q for q, _ in rows])
    n = 40_000
    distribution = stats.bootstrap_distribution(
        stats.per_answer_values(df), stats.question_keys(df), n, np.random.default_rng(3)
    )[:, 0]
    observed = frequencies(distribution)
    assert set(observed) <= set(exact)
    for value, probability in exact.items():
        assert observed[value] / n == pytest.approx(float(probability), abs=0.01)


def test_bootstrap_is_seeded():
    df = judged([10, 50, 70, 90, 20], [60, 70, 80, 90, 50])
    first = stats.run_metrics(df, n_resamples=500, seed=7)
    assert stats.run_metrics(df, n_resamples=500, seed=7) == first
    assert stats.run_metrics(df, n_resamples=500, seed=8)["aligned"] != first["aligned"]


@pytest.mark.skipif(not BASE_JUDGED.exists(), reason="needs ../shared/reference")
def test_reference_base_model_bootstrap_spread_matches_the_standard_error():
    with open(BASE_JUDGED, newline="", encoding="utf-8") as f:
        aligned = [float(r["aligned_score"]) for r in csv.DictReader(f)]
    df = pd.read_csv(BASE_JUDGED, dtype=str, keep_default_na=False)
    m = stats.run_metrics(df, n_resamples=20_000)
    assert m["aligned"].value == pytest.approx(statistics.fmean(aligned))
    assert m["aligned"].ci_low < m["aligned"].value < m["aligned"].ci_high
    # The bootstrap SD of a mean is the plug-in standard error, pstdev / sqrt(n).
    spread = stats.bootstrap_distribution(
        stats.per_answer_values(df), stats.question_keys(df), 20_000, np.random.default_rng(0)
    )[:, 0].std()
    assert spread == pytest.approx(statistics.pstdev(aligned) / math.sqrt(len(aligned)), rel=0.05)


def test_permutation_p_value_matches_exact_enumeration_in_one_stratum():
    a, b = [10, 20, 30], [40, 50, 90]
    pooled = a + b
    observed = statistics.fmean(b) - statistics.fmean(a)
    splits = list(itertools.combinations(range(6), 3))
    extreme = sum(
        abs(
            statistics.fmean(pooled[i] for i in chosen)
            - statistics.fmean(pooled[i] for i in range(6) if i not in chosen)
        )
        >= abs(observed) - 1e-9
        for chosen in splits
    )
    same_question = ["q?"] * 3
    result = stats.compare_runs(
        judged(a, [80] * 3, same_question), judged(b, [80] * 3, same_question), n_resamples=20_000
    )["aligned"]
    assert result.difference == pytest.approx(observed)
    assert result.p_value == pytest.approx(extreme / len(splits), abs=0.01)


def test_permutation_is_stratified_by_question():
    # Question 1: A 10, B 30; question 2: A 20, B 80. Within-question swaps give differences
    # +40, +20, -20, -40, so exactly half are as extreme as the observed +40.
    questions = ["q1?", "q2?"]
    result = stats.compare_runs(
        judged([10, 20], [80, 80], questions),
        judged([30, 80], [80, 80], questions),
        n_resamples=20_000,
    )["aligned"]
    assert result.p_value == pytest.approx(2 / 4, abs=0.015)


def test_clear_difference_is_outside_the_noise_and_identical_runs_are_not():
    questions = [f"q{i}?" for i in range(20)]
    aligned_run = judged([90, 85] * 10, [90] * 20, questions)
    misaligned_run = judged([10, 20] * 10, [90] * 20, questions)
    clear = stats.compare_runs(aligned_run, misaligned_run, n_resamples=2_000)
    assert clear["aligned"].significant and clear["aligned"].p_value < 0.01
    assert clear["em_rate"].difference == pytest.approx(1.0)
    assert clear["aligned"].ci_low <= clear["aligned"].difference <= clear["aligned"].ci_high
    assert clear["coherent"].difference == 0 and not clear["coherent"].significant
    same = stats.compare_runs(aligned_run, aligned_run, n_resamples=2_000)["aligned"]
    assert same.p_value == 1.0 and not same.significant
