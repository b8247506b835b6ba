"""People's labels of some answers as ground truth: each judge's agreement with them.

An experiment may keep `human_labels.csv` beside its config.json (Layout.human_labels): one row
per label, columns `id`, `metric`, `value` and optionally `model` (`base` or `finetuned`, default
`finetuned`), `seed` (the training seed of a fine-tuned answer; needed where the experiment has
several), `response` (the answer the person read; if it no longer matches the judged CSV the
answer was regenerated and the label is stale) and `note` (free text, not read). `metric` is a
judged score (aligned, coherent, ...: a number from 0 to 100) or `em` (the EM label: 1/0,
true/false or yes/no). An answer labelled on every metric of the EM rule but without an `em` row
gets its EM label from the person's scores, by the report's EM rule.

For each judge (the primary first, then the panel in config order): Krippendorff's alpha
(interval) and the mean absolute error of each score against the person's, Cohen's kappa, the
agreement share and the confusion of the EM label, with the statistics of
`emflow.report.agreement`. An answer the judge could not score (CODE, REFUSAL, invalid) is left
out of that metric's numbers, as between judges.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from emflow.errors import EmflowError
from emflow.report import stats
from emflow.report.agreement import em_confusion, em_kappa, interval_alpha
from emflow.report.analysis import Analysis, JudgedRun

EM = "em"
COLUMNS = ("id", "metric", "value", "model", "seed", "response", "note")
REQUIRED = COLUMNS[:3]
# The `model` column's values, and how the judges' answers name the same targets.
MODELS = {"base": "base model", "finetuned": "fine-tuned"}
EM_VALUES = {"1": 1, "true": 1, "yes": 1, "0": 0, "false": 0, "no": 0}


@dataclass(frozen=True)
class Label:
    """One row of a labels file: a person's value of one metric of one answer."""

    line: int
    target: str  # a value of MODELS
    seed: int | None  # the training seed of a replicated fine-tuned run, else None
    id: str
    metric: str
    value: float
    response: str | None


@dataclass(frozen=True)
class ScoreAgreement:
    """A judge's score against people's: answers both scored, alpha, mean |difference|."""

    n: int
    alpha: float
    mae: float


@dataclass(frozen=True)
class JudgeVsPeople:
    """One judge against people: each score's agreement, and the EM label's kappa, share of
    answers labelled alike and confusion (`confusion[i][j]`: the person says i, the judge j;
    0: not EM, 1: EM)."""

    judge: str
    scores: dict[str, ScoreAgreement]
    n_em: int
    kappa: float
    agreement: float
    confusion: np.ndarray


@dataclass(frozen=True)
class HumanAgreement:
    """Each judge's agreement with the labels of one file."""

    source: str  # the labels file's name, as results.md cites it
    n_labels: int
    answers: dict[str, int]  # target -> labelled answers
    n_derived_em: int  # answers whose EM label came from the person's scores
    judges: list[JudgeVsPeople]


def _fail(path: str, line: int, message: str) -> EmflowError:
    return EmflowError(f"{path}, line {line}: {message}.")


def _value(path: str, line: int, metric: str, text: str) -> float:
    if metric == EM:
        if text.lower() not in EM_VALUES:
            raise _fail(path, line, f"em value {text!r} is not an EM label; write 1/0, "
                        "true/false or yes/no")  # fmt: skip
        return float(EM_VALUES[text.lower()])
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= 100:  # NaN fails too
        raise _fail(path, line, f"{metric} value {text!r} is not a score; write a number from "
                    "0 to 100")  # fmt: skip
    return value


def _seed(path: str, line: int, model: str, text: str, seeds: list[int] | None) -> int | None:
    listed = ", ".join(map(str, seeds or []))
    if model == "base" or seeds is None:
        if text:
            whose = "the base model has no training seed" if model == "base" else (
                "the experiment has one fine-tuned run")  # fmt: skip
            raise _fail(path, line, f"seed {text!r} given but {whose}; leave seed empty")
        return None
    if not text.isdigit() or int(text) not in seeds:
        problem = f"seed {text!r} is not" if text else "the seed is missing; it must be"
        raise _fail(path, line, f"{problem} one of the experiment's training seeds ({listed}); "
                    "write the seed of the fine-tuned run the answer is from")  # fmt: skip
    return int(text)


def _rows(path: str):
    """(the line a row starts on, its cells by column) for each non-blank row of a CSV file."""
    with open(path, newline="", encoding="utf-8-sig") as file:
        reader = csv.reader(file)
        header = [name.strip() for name in next(reader, [])]
        end = reader.line_num
        for row in reader:
            # A quoted response may span lines: a row starts where the previous one ended.
            line, end = end + 1, reader.line_num
            if any(cell.strip() for cell in row):
                yield line, dict(zip(header, row, strict=False))


def _header(path: str) -> None:
    with open(path, newline="", encoding="utf-8-sig") as file:
        header = [name.strip() for name in next(csv.reader(file), [])]
    missing = [name for name in REQUIRED if name not in header]
    unknown = [name for name in header if name not in COLUMNS]
    if missing or unknown:
        problem = f"no column {missing[0]!r}" if missing else f"unknown column {unknown[0]!r}"
        raise _fail(path, 1, f"{problem}; the header names {', '.join(REQUIRED)} (optional: "
                    f"{', '.join(COLUMNS[3:])})")  # fmt: skip


def read_human_labels(
    path: str | Path, analysis: Analysis, seeds: list[int] | None = None
) -> list[Label]:
    """A labels file's rows, checked: columns, model, seed (`seeds`: the experiment's training
    seeds, None for a single fine-tuned run), metric, value, and no label given twice."""
    path = str(path)
    _header(path)
    metrics = (*analysis.metrics.judged, EM)
    labels, seen = [], {}
    for line, raw in _rows(path):
        cells = {name: (cell or "").strip() for name, cell in raw.items()}
        model = cells.get("model") or "finetuned"
        if model not in MODELS:
            raise _fail(path, line, f"model {model!r} is neither base nor finetuned; write one "
                        "of them (empty: finetuned)")  # fmt: skip
        metric = cells.get("metric", "").lower()
        if metric not in metrics:
            raise _fail(path, line, f"unknown metric {cells.get('metric', '')!r}; use one of "
                        f"{', '.join(metrics)}")  # fmt: skip
        if not cells.get("id"):
            raise _fail(path, line, "the id is empty; give the answer's id from the judged CSV")
        seed = _seed(path, line, model, cells.get("seed", ""), seeds)
        value = _value(path, line, metric, cells.get("value", ""))
        response = raw.get("response") if cells.get("response") else None
        label = Label(line, MODELS[model], seed, cells["id"], metric, value, response)
        key = (label.target, seed, label.id, metric)
        if key in seen:
            raise _fail(path, line, f"{metric} of {model} answer {label.id!r} is labelled again "
                        f"(first on line {seen[key]}); keep one of the two rows")  # fmt: skip
        seen[key] = line
        labels.append(label)
    if not labels:
        raise _fail(path, 2, "the file has no labels; add some, or delete the file")
    return labels


def _answers(runs: tuple[JudgedRun, JudgedRun], analysis: Analysis) -> pd.DataFrame:
    """One judge's per-answer values (stats.per_answer_values) and responses, one row per
    (target, seed, id); seed -1 for the base model and a single run."""
    parts = []
    for target, run in zip(MODELS.values(), runs, strict=True):
        frames = run.frames if run.replicated else {-1: run.frames}
        for seed, df in frames.items():
            values = stats.per_answer_values(df, analysis.thresholds.em, analysis.metrics)
            part = pd.DataFrame(values, columns=list(analysis.metrics.names))
            part.insert(0, "response", df["response"].astype(str).to_numpy())
            part.insert(0, "id", df["id"].astype(str).to_numpy())
            part.insert(0, "seed", seed)
            part.insert(0, "target", target)
            parts.append(part)
    return pd.concat(parts, ignore_index=True).drop_duplicates(["target", "seed", "id"])


def _same(a: str, b: str) -> bool:
    """Whether two answer texts are the same, whatever the line endings and outer whitespace."""
    return a.replace("\r\n", "\n").strip() == b.replace("\r\n", "\n").strip()


def _people(labels: list[Label], answers: pd.DataFrame, path: str, analysis: Analysis):
    """People's values, one row per labelled answer (target, seed, id), NaN where not labelled;
    an answer's EM label derived from its scores where it has none. Checks ids and responses."""
    known = answers.set_index(["target", "seed", "id"])["response"]
    rows: dict[tuple, dict[str, float]] = {}
    for label in labels:
        key = (label.target, -1 if label.seed is None else label.seed, label.id)
        if key not in known.index:
            seed = "" if label.seed is None else f", seed {label.seed}"
            raise _fail(path, label.line, f"no {label.target} answer{seed} has id "
                        f"{label.id!r}; use an id of that model's judged CSV")  # fmt: skip
        if label.response is not None and not _same(label.response, str(known[key])):
            raise _fail(path, label.line, f"the response of answer {label.id!r} differs from "
                        "the judged CSV's (the answer was regenerated, so the label is stale); "
                        "label the new answer, or delete the row")  # fmt: skip
        rows.setdefault(key, {})[label.metric] = label.value
    people = pd.DataFrame(
        [{"target": t, "seed": s, "id": i, **values} for (t, s, i), values in rows.items()]
    )
    for name in (*analysis.metrics.judged, EM):
        if name not in people:
            people[name] = np.nan
    rule = analysis.thresholds.em
    scored = people[list(rule.metrics)].notna().all(axis=1)
    derive = scored & people[EM].isna()
    held = rule({m: people[m].to_numpy(dtype=float) for m in rule.metrics})
    people.loc[derive, EM] = held[derive.to_numpy()].astype(float)
    return people, int(derive.sum())


def _judge_vs_people(name: str, people: pd.DataFrame, judge: pd.DataFrame, analysis: Analysis):
    joined = people.merge(
        judge, on=["target", "seed", "id"], how="left", suffixes=("_person", "_judge")
    )
    scores = {}
    for m in analysis.metrics.judged:
        x, y = joined[f"{m}_person"].to_numpy(float), joined[f"{m}_judge"].to_numpy(float)
        both = ~np.isnan(x) & ~np.isnan(y)
        mae = float(np.abs(x[both] - y[both]).mean()) if both.any() else math.nan
        scores[m] = ScoreAgreement(int(both.sum()), interval_alpha(x[both], y[both]), mae)
    x, y = joined[EM].to_numpy(float), joined["em_rate"].to_numpy(float)
    both = ~np.isnan(x) & ~np.isnan(y)
    x, y = x[both], y[both]
    share = float((x == y).mean()) if len(x) else math.nan
    return JudgeVsPeople(name, scores, len(x), em_kappa(x, y), share, em_confusion(x, y))


def human_agreement(
    path: str | Path,
    runs: Mapping[str, tuple[JudgedRun, JudgedRun]],
    analysis: Analysis,
) -> HumanAgreement:
    """Each judge's agreement with the labels in `path`; `runs` maps a judge's name to its
    (base model, fine-tuned) runs of the same answers, the primary first (its answers are the
    ones the labels must name)."""
    path = str(path)
    answers = {name: _answers(pair, analysis) for name, pair in runs.items()}
    primary = next(iter(runs.values()))[1]
    seeds = list(primary.frames) if primary.replicated else None
    labels = read_human_labels(path, analysis, seeds)
    people, derived = _people(labels, next(iter(answers.values())), path, analysis)
    counts = people["target"].value_counts()
    return HumanAgreement(
        source=Path(path).name,
        n_labels=len(labels),
        answers={t: int(counts.get(t, 0)) for t in MODELS.values()},
        n_derived_em=derived,
        judges=[_judge_vs_people(n, people, a, analysis) for n, a in answers.items()],
    )
