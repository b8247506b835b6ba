"""The judge's own noise, from the k draws a sampled judge (`samples: k > 1`) makes per answer.

For every judge of the experiment (the primary and each panel judge) whose judged CSVs keep k > 1
raw replies per answer and metric (`<metric>_replies`), a researcher gets:

- the within-answer spread: per metric, the mean over answers of the SD of an answer's numeric
  draws (the answers with at least two);
- how much of each CI comes from the judge: the SD of mean aligned, mean coherent (every judged
  score) and the EM rate under a bootstrap over the judge's draws within answers (answers fixed,
  each answer's k draws resampled with replacement and re-aggregated by the judge's own rule,
  `emflow.judge.scores.aggregate_samples`) beside the SD behind the Metrics table's CI (the
  bootstrap over answers of a single run; the seeds' standard error for replicates), and the
  judge's share of the variance;
- the homework's verdict under re-judging: as if the homework's single-draw judge had judged,
  each answer of the fine-tuned run takes one of its k draws at random, and the verdict is
  computed by the same code as results.md's headline (`JudgedRun.passes`); the share of such
  re-judgings that PASS, and that differ from the headline.

Numbers only; `emflow.report.judges.noise_section` writes the text.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from emflow.errors import EmflowError
from emflow.judge.scores import aggregate_samples, format_score, parse_judge_reply
from emflow.judge.settings import LABELS
from emflow.report.analysis import Analysis, JudgedRun
from emflow.report.metrics import EM_RATE, HOMEWORK_METRICS, MetricSet

# A parsed draw's kind: padding (an answer with fewer draws than the widest), an unusable reply,
# a number, or one of the judge's labels (kept apart: the majority rule counts each label alone).
PAD, UNUSABLE, NUMBER = -1, 0, 1
LABEL_KINDS = {label: 2 + i for i, label in enumerate(LABELS)}
TARGETS = ("base model", "fine-tuned")
# Resampled draws held in memory at once (resamples x answers x draws), to bound memory.
_CELLS_PER_CHUNK = 2_000_000


@dataclass(frozen=True)
class Draws:
    """One judged frame's parsed draws of one metric: `kinds` and `values` are (answers, k) with
    PAD beyond an answer's own draws; `cells` each draw as a one-draw judge's score cell."""

    kinds: np.ndarray
    values: np.ndarray
    cells: np.ndarray

    @property
    def k(self) -> int:
        return self.kinds.shape[1]

    @property
    def lengths(self) -> np.ndarray:
        return (self.kinds != PAD).sum(axis=1)


@dataclass(frozen=True)
class MetricNoise:
    """One metric of one judge's run: the mean within-answer SD of the draws over `n_spread`
    answers (NaN for the EM rate), the SD behind the Metrics table's CI and under the bootstrap
    over the judge's draws."""

    metric: str
    spread: float
    n_spread: int
    ci_sd: float
    judge_sd: float

    @property
    def judge_share(self) -> float:
        """var(judge draws) / var(CI), capped at 1 (also where the answers' aggregates do not
        vary at all but their draws do); 0 for a judge without noise; NaN where undefined."""
        if self.judge_sd == 0:
            return 0.0
        if np.isnan(self.ci_sd) or np.isnan(self.judge_sd):
            return float("nan")
        if self.ci_sd == 0:
            return 1.0
        return float(min(1.0, self.judge_sd**2 / self.ci_sd**2))


@dataclass(frozen=True)
class JudgeNoise:
    """One sampled judge's noise: k draws per answer; per target ("base model", "fine-tuned") and
    metric a MetricNoise; the shares of single-draw re-judgings of the fine-tuned run that PASS
    and whose verdict differs from results.md's headline."""

    name: str
    k: int
    targets: dict[str, dict[str, MetricNoise]]
    pass_share: float
    flip_share: float
    n_rejudged: int


@dataclass(frozen=True)
class PanelNoise:
    """Every judge with k > 1 draws, the headline verdict and how the numbers were drawn."""

    judges: list[JudgeNoise]
    headline_passed: bool
    n_resamples: int
    seed: int
    replicated: bool


# ---------------------------------------------------------------------------------------------
# Reading the draws


def read_draws(df: pd.DataFrame, metric: str, parse: str, judge: str) -> Draws | None:
    """A frame's draws of `metric` from its `<metric>_replies` column (None where the judged CSV
    has none: a logprob judge), each parsed with the judge's `parse`; every answer's draws must
    re-aggregate to its `<metric>_score` cell, as the judge wrote it."""
    column = f"{metric}_replies"
    if column not in df.columns:
        return None
    parsed = []
    for answer, replies, cell in zip(df["id"], df[column], df[f"{metric}_score"], strict=True):
        try:
            texts = json.loads(replies)
        except (TypeError, ValueError):
            texts = None
        if not isinstance(texts, list):
            raise EmflowError(
                f"judge {judge}: answer {answer!r} has {column} {str(replies)[:40]!r}, not a JSON "
                "list of the judge's replies; re-judge it (delete the judged CSV and rerun)."
            )
        draws = [parse_judge_reply(text, parse) for text in texts]
        again = format_score(aggregate_samples(draws))
        if again != str(cell).strip():
            raise EmflowError(
                f"judge {judge}: answer {answer!r} has {metric}_score {cell!r}, but its "
                f"{len(texts)} replies give {again!r} when read with parse '{parse}'; the judged "
                "CSV was edited or judged with other settings: re-judge it."
            )
        parsed.append(draws)
    k = max((len(d) for d in parsed), default=0)
    kinds = np.full((len(parsed), k), PAD, dtype=np.int8)
    values = np.full((len(parsed), k), np.nan)
    cells = np.full((len(parsed), k), "", dtype=object)
    for i, draws in enumerate(parsed):
        for j, draw in enumerate(draws):
            if isinstance(draw, float):
                kinds[i, j], values[i, j] = NUMBER, draw
            else:
                kinds[i, j] = UNUSABLE if draw is None else LABEL_KINDS[draw]
            cells[i, j] = format_score(draw)
    return Draws(kinds, values, cells)


def aggregate(kinds: np.ndarray, values: np.ndarray) -> np.ndarray:
    """`aggregate_samples` over the last axis, vectorised: the mean of the numeric draws, NaN
    where there is none or a label outnumbers them (a label, which no mean counts)."""
    numbers = kinds == NUMBER
    n_numbers = numbers.sum(axis=-1)
    top_label = np.max([(kinds == kind).sum(axis=-1) for kind in LABEL_KINDS.values()], axis=0)
    total = np.where(numbers, values, 0.0).sum(axis=-1)
    scored = (n_numbers > 0) & (top_label <= n_numbers)
    return np.where(scored, total / np.maximum(n_numbers, 1), np.nan)


def within_answer_sd(draws: Sequence[Draws]) -> tuple[float, int]:
    """The mean over answers (of every frame) of the sample SD (n - 1) of an answer's numeric
    draws, over the answers with at least two, and how many answers that is."""
    sds = []
    for d in draws:
        for kinds, values in zip(d.kinds, d.values, strict=True):
            numbers = values[kinds == NUMBER]
            if len(numbers) >= 2:
                sds.append(float(np.std(numbers, ddof=1)))
    return (float(np.mean(sds)) if sds else float("nan")), len(sds)


# ---------------------------------------------------------------------------------------------
# The bootstrap over draws within answers


def _nanmean(values: np.ndarray) -> np.ndarray:
    """Mean over the last axis, ignoring NaN; NaN where nothing is defined."""
    defined = ~np.isnan(values)
    count = defined.sum(axis=-1)
    total = np.where(defined, values, 0.0).sum(axis=-1)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _resample(d: Draws, b: int, rng: np.random.Generator) -> np.ndarray:
    """`b` re-aggregations of each answer's draws resampled with replacement: (b, answers)."""
    n, k = d.kinds.shape
    lengths = d.lengths
    if n == 0 or k == 0:
        return np.full((b, n), np.nan)
    picked = np.floor(rng.random((b, n, k)) * lengths[None, :, None]).astype(np.int64)
    rows = np.arange(n)[None, :, None]
    kinds = np.where(np.arange(k) < lengths[:, None], d.kinds[rows, picked], PAD)
    return aggregate(kinds, d.values[rows, picked])


def draw_bootstrap(
    frames: Sequence[Mapping[str, Draws]],
    metrics: MetricSet,
    em,
    n_resamples: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Each shown metric (the judged scores, then the EM rate) over `n_resamples` resamples of
    the draws within answers, shape (n_resamples, metrics); several frames (a run's seeds): the
    mean of the frames' metrics, as the Metrics table takes the mean over seeds."""
    names = [m.name for m in metrics.scores]
    per_frame = []
    for draws in frames:
        n, k = next(iter(draws.values())).kinds.shape
        chunk = max(1, _CELLS_PER_CHUNK // max(1, n * k))
        parts = []
        for begin in range(0, n_resamples, chunk):
            b = min(chunk, n_resamples - begin)
            scores = {name: _resample(draws[name], b, rng) for name in names}
            scored = np.logical_and.reduce([~np.isnan(scores[m]) for m in em.metrics])
            em_values = np.where(scored, em(scores).astype(float), np.nan)
            parts.append(np.stack([*(_nanmean(scores[m]) for m in names), _nanmean(em_values)], 1))
        per_frame.append(np.concatenate(parts))
    return _nanmean(np.stack(per_frame, axis=-1))


def _sd(samples: np.ndarray) -> float:
    """The SD (n - 1) of the defined resamples; exactly 0 where they are all equal (a judge
    without noise), which a float mean of many equal values would miss by rounding."""
    defined = samples[~np.isnan(samples)]
    if len(defined) < 2:
        return float("nan")
    return 0.0 if np.ptp(defined) == 0 else float(defined.std(ddof=1))


# ---------------------------------------------------------------------------------------------
# Re-judging with one draw per answer


def rejudged_verdicts(
    run: JudgedRun,
    draws: Sequence[Mapping[str, Draws]],
    analysis: Analysis,
    n_rejudged: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """`n_rejudged` homework verdicts (True: PASS) of `run` re-judged by a one-draw judge: each
    answer's aligned and coherent cells replaced by one of its draws, picked at random, and the
    verdict computed as results.md's headline (`JudgedRun.passes`, the same row rule)."""
    frames = run.frame_list()
    keys = list(run.frames) if run.replicated else None
    # The columns the homework's rule reads besides the scores (which question set a row is).
    kept = [df[[c for c in ("id", "question_set") if c in df.columns]] for df in frames]
    verdicts = np.empty(n_rejudged, dtype=bool)
    for r in range(n_rejudged):
        rejudged = []
        for df, frame_draws in zip(kept, draws, strict=True):
            cells = {}
            for metric in HOMEWORK_METRICS:
                d = frame_draws[metric]
                picked = np.floor(rng.random(len(df)) * d.lengths).astype(np.int64)
                cells[f"{metric}_score"] = d.cells[np.arange(len(df)), picked]
            rejudged.append(df.assign(**cells))
        frames_now = dict(zip(keys, rejudged, strict=True)) if keys else rejudged[0]
        again = JudgedRun(frames_now, run.metrics, run.homework_sets)
        verdicts[r] = again.passes(analysis.thresholds)
    return verdicts


# ---------------------------------------------------------------------------------------------
# Every judge


def sampled_parse(usage_json: str | os.PathLike | None) -> str | None:
    """How a sampled judge read its replies (its usage JSON's `parse`, as its judged CSV was
    written); None for a logprob judge, or where no usage JSON says (no noise is reported)."""
    if usage_json is None:
        return None
    with open(usage_json, encoding="utf-8-sig") as file:
        usage = json.load(file)
    if usage.get("mode", "sampled") != "sampled":
        return None
    return usage.get("parse") or "homework"


def judge_noise(
    runs: Mapping[str, tuple[JudgedRun, JudgedRun]],
    usage_files: Mapping[str, str | os.PathLike | None],
    analysis: Analysis,
    headline_passed: bool,
) -> PanelNoise | None:
    """The noise of every judge in `runs` ({name: (base model, fine-tuned) runs}) that draws
    k > 1 times per answer; `usage_files` maps a judge to its base model's judge_usage JSON
    (which says how it parsed its replies; None: no row). None where no judge draws more than
    once (no section)."""
    judges = []
    for name, (base, tuned) in runs.items():
        parse = sampled_parse(usage_files.get(name))
        if not parse:
            continue
        draws = _run_draws(base, tuned, name, parse, analysis.metrics)
        if draws is None:
            continue
        k = max(d.k for target in draws for frame in target for d in frame.values())
        if k < 2:
            continue
        judges.append(_one_judge(name, k, (base, tuned), draws, analysis, headline_passed))
    if not judges:
        return None
    replicated = any(run.replicated for pair in runs.values() for run in pair)
    return PanelNoise(judges, headline_passed, analysis.n_resamples, analysis.seed, replicated)


def _run_draws(base: JudgedRun, tuned: JudgedRun, name: str, parse: str, metrics: MetricSet):
    """[base frames' draws, fine-tuned frames' draws], each frame {metric: Draws}; None where a
    frame has no replies (not a sampled judge)."""
    out = []
    for run in (base, tuned):
        frames = []
        for df in run.frame_list():
            found = {m.name: read_draws(df, m.name, parse, name) for m in metrics.scores}
            if any(d is None for d in found.values()):
                return None
            frames.append(found)
        out.append(frames)
    return out


def _one_judge(name, k, runs, draws, analysis: Analysis, headline_passed: bool) -> JudgeNoise:
    # One generator per judge, seeded alike: a judge's numbers do not depend on the panel's order.
    rng = np.random.default_rng(analysis.seed)
    metrics = analysis.metrics
    shown = [*metrics.scores, EM_RATE]
    targets = {}
    for target, run, frames in zip(TARGETS, runs, draws, strict=True):
        boot = draw_bootstrap(frames, metrics, analysis.thresholds.em, analysis.n_resamples, rng)
        noise = {}
        for j, metric in enumerate(shown):
            if metric.name == EM_RATE.name:
                spread, n_spread = float("nan"), 0
            else:
                spread, n_spread = within_answer_sd([f[metric.name] for f in frames])
            noise[metric.name] = MetricNoise(
                metric.name, spread, n_spread, float(run.metrics[metric.name].se), _sd(boot[:, j])
            )
        targets[target] = noise
    verdicts = rejudged_verdicts(runs[1], draws[1], analysis, analysis.n_resamples, rng)
    return JudgeNoise(
        name,
        k,
        targets,
        float(verdicts.mean()),
        float((verdicts != headline_passed).mean()),
        len(verdicts),
    )
