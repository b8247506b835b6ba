"""The answers behind the numbers, gathered for the answer page (answers.html).

Every answer of an experiment (the base model's, each run's, each sweep step's and LoRA scale's)
with every judge's scores and EM label, as one compact dict: repeated texts (questions, system
prompts, ids) are kept once in `strings` and the rows point at them, so the page stays smaller
than the judged CSVs it shows. The EM label is the reports' own (stats.per_answer_values with the
workflow's EM rule), so the page and results.md never disagree about an answer.

emflow.report.answer_html turns the dict into the page; the format is its `version` 1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from emflow.atomic import write_text_atomic
from emflow.errors import EmflowError
from emflow.paths import target_run_and_step, target_scale
from emflow.report import stats
from emflow.report.analysis import Analysis
from emflow.report.answer_html import render_answer_page
from emflow.report.judged import read_judged_csv
from emflow.report.tables import DEMO_NOTICE

FORMAT_VERSION = 1
# The answer columns the page shows besides the response and the scores; a CSV without one
# (a homework-format CSV has only id, question, response) shows it empty.
_TEXT_COLUMNS = ("id", "set", "question_id", "question", "system", "training_prompt")
_CSV_COLUMN = {"set": "question_set"}


@dataclass(frozen=True)
class AnswerTarget:
    """One generated-and-judged target as the page lists it: `judged` maps each judge's name to
    its judged CSV of the target, the primary judge first (a judge that did not score this
    target is absent)."""

    target: str
    experiments: tuple[str, ...]
    seed: int | None
    judged: Mapping[str, str] = field(default_factory=dict)

    def describe(self) -> dict[str, object]:
        run, step = target_run_and_step(self.target)
        scaled = target_scale(self.target)
        kind = (
            "base" if run is None else "step" if step is not None else "scale" if scaled else "run"
        )
        scale = scaled[1] if scaled else None
        parts = [] if self.seed is None or kind == "base" else [f"seed {self.seed}"]
        if kind == "step":
            parts.append(f"step {step}")
        elif kind == "scale":
            parts.append(f"LoRA scale {scale:g}")
        label = "base model" if kind == "base" else ", ".join(parts) or "fine-tuned"
        return {"target": self.target, "kind": kind, "label": label, "seed": self.seed,
                "step": step, "scale": scale}  # fmt: skip


class _Strings:
    """The page's dictionary of repeated texts: each distinct text once, rows hold its index."""

    def __init__(self):
        self.texts: list[str] = [""]
        self.index: dict[str, int] = {"": 0}

    def __call__(self, text: str) -> int:
        found = self.index.get(text)
        if found is None:
            found = self.index[text] = len(self.texts)
            self.texts.append(text)
        return found


def _number(value: float) -> float | int | None:
    """A score for JSON: None for NaN, an int where the score is whole (most are)."""
    if math.isnan(value):
        return None
    return int(value) if value.is_integer() else float(value)


def _int_cell(cell: str, where: str, column: str) -> int:
    try:
        return int(cell) if cell != "" else 0
    except ValueError:
        raise EmflowError(
            f"{where}: column {column} holds {cell!r}, not an integer; regenerate the answers "
            "(emflow's generator numbers paraphrases and samples from 0)."
        ) from None


def answer_page_data(
    targets: Sequence[AnswerTarget],
    report: Mapping[str, object],
    *,
    title: str,
) -> dict[str, object]:
    """The answer page's data (FORMAT_VERSION) of `targets`: each target's rows in its primary
    judge's CSV order, targets in the order given; `report` is a job's `params.report`
    (emflow.report.settings.report_settings), for the metrics, the EM rule and the demo flag."""
    analysis = Analysis.from_report_config(report)
    metrics = analysis.metrics
    judges = list(dict.fromkeys(name for t in targets for name in t.judged))
    experiments = list(dict.fromkeys(e for t in targets for e in t.experiments))
    strings = _Strings()
    columns: dict[str, list] = {name: [] for name in ("target", *_TEXT_COLUMNS)}
    columns |= {"paraphrase": [], "sample": [], "response": []}
    scores = {j: {m.name: [] for m in metrics.scores} for j in judges}
    em: dict[str, list] = {j: [] for j in judges}
    described = []
    for t_index, target in enumerate(targets):
        described.append(
            target.describe() | {"experiments": [experiments.index(e) for e in target.experiments]}
        )
        primary, *_ = target.judged.values()
        df = read_judged_csv(primary, metrics)
        n = len(df)
        columns["target"] += [t_index] * n
        for name in _TEXT_COLUMNS:
            column = _CSV_COLUMN.get(name, name)
            cells = df[column] if column in df.columns else [""] * n
            columns[name] += [strings(str(cell)) for cell in cells]
        for name in ("paraphrase", "sample"):
            cells = df[name] if name in df.columns else [""] * n
            columns[name] += [_int_cell(str(c), f"{primary}", name) for c in cells]
        columns["response"] += df["response"].astype(str).tolist()
        ids = df["id"].astype(str)
        for judge in judges:
            path = target.judged.get(judge)
            # The primary's frame is the one just read; each panel judge's is read once.
            judged = (
                df if path == primary else None if path is None else read_judged_csv(path, metrics)
            )
            values = _judge_values(judged, path, ids, analysis)
            for m_index, metric in enumerate(metrics.scores):
                scores[judge][metric.name] += [_number(v) for v in values[:, m_index]]
            em_column = values[:, len(metrics.scores)]
            em[judge] += [None if math.isnan(v) else int(v) for v in em_column]
    bases = [t for t in described if t["kind"] == "base"]
    if len(bases) > 1:
        # The summary page may compare against several base models: name each.
        for t in bases:
            t["label"] = f"base model {t['target'].removeprefix('base/')}"
    if not any(columns["training_prompt"]):
        # Only runs asked under their own instruction have one (questions.training_prompt).
        del columns["training_prompt"]
    return {
        "version": FORMAT_VERSION,
        "title": title,
        "demo": bool(report.get("demo", False)),
        "demo_notice": DEMO_NOTICE.replace("**", ""),
        "judges": judges,
        "metrics": [m.name for m in metrics.scores],
        "em_rule": analysis.thresholds.em.describe(),
        "experiments": experiments,
        "targets": described,
        "strings": strings.texts,
        "n": len(columns["target"]),
        "columns": columns | {"scores": scores, "em": em},
    }


def _judge_values(df: pd.DataFrame | None, path: str | None, ids, analysis: Analysis) -> np.ndarray:
    """One judge's per-answer (scores..., EM) from its judged frame `df` (read from `path`), in
    the order of the answer ids `ids`; NaN rows where the judge did not score the target (`df`
    None) or an answer."""
    width = len(analysis.metrics.scores) + 1
    out = np.full((len(ids), width), np.nan)
    if df is None:
        return out
    values = stats.per_answer_values(df, analysis.thresholds.em, analysis.metrics)[:, :width]
    position = {answer_id: i for i, answer_id in enumerate(df["id"].astype(str))}
    if len(position) != len(df):
        raise EmflowError(
            f"{path}: an id appears twice; give every answer its own id (regenerate the answers)."
        )
    for row, answer_id in enumerate(ids):
        found = position.get(answer_id)
        if found is not None:
            out[row] = values[found]
    return out


def write_answer_page(
    targets: Sequence[Mapping[str, object]],
    report: Mapping[str, object],
    *,
    title: str,
    output: str,
    encoding: str = "json",
) -> None:
    """The `answers` and `summary_answers` rules: the answer page of `targets` (plain dicts, as
    emflow.workflow.answer_targets plans them), written atomically to `output`; `encoding`, how
    the data is embedded (emflow.report.answer_html.ENCODINGS)."""
    answer_targets = [
        AnswerTarget(t["target"], tuple(t["experiments"]), t["seed"], dict(t["judged"]))
        for t in targets
    ]
    data = answer_page_data(answer_targets, report, title=title)
    write_text_atomic(output, render_answer_page(data, encoding))
