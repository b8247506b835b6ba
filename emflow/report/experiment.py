"""The `results` rule's job: read an experiment's judged CSVs, usage JSONs and hooks (sweep,
dose, judge panel, human labels, log histories), draw its per-question figures and write
results.md beside its config.

The numbers are `emflow.report.analysis.experiment_results`; the text is
`emflow.report.results.results_markdown`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from emflow.atomic import write_text_atomic
from emflow.errors import EmflowError
from emflow.paths import QUESTION_EM_RATES
from emflow.report.agreement import PRIMARY, panel_agreement
from emflow.report.analysis import (
    Analysis,
    ExperimentResults,
    JudgedRun,
    experiment_results,
    load_run,
)
from emflow.report.capabilities import capabilities_section, experiment_capability_rows
from emflow.report.dose import dose_section
from emflow.report.figures import plot_question_em, plot_question_scores
from emflow.report.human_labels import human_agreement
from emflow.report.judge_noise import judge_noise
from emflow.report.judged import Judged, JudgedSeeds
from emflow.report.results import pooled_label, results_markdown, sweep_markdown
from emflow.report.tables import PanelUsage
from emflow.report.training import early_stop_line, read_log_history


def _read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8-sig") as file:
        return json.load(file)


def _usage(
    base_usage: str, finetuned_usage: Sequence[str], seeds: Sequence[int] | None
) -> dict[str, Any]:
    """One judge's usage JSON per target, as results.md's usage table names the targets."""
    usages = [_read_json(path) for path in finetuned_usage]
    if seeds is None:
        usage = {"fine-tuned model": usages[0]}
    else:
        usage = {f"fine-tuned, seed {s}": u for s, u in zip(seeds, usages, strict=True)}
    usage["base model"] = _read_json(base_usage)
    return usage


def _judge_runs(
    results: ExperimentResults,
    panel: Mapping[str, Mapping[str, Any]] | None,
    seeds: Sequence[int] | None,
) -> dict[str, tuple[JudgedRun, JudgedRun]]:
    """Each judge's (base model, fine-tuned) runs: the primary's (already read), then the
    panel's, read once for both the panel's agreement and the human labels."""
    analysis = results.analysis
    runs = {PRIMARY: (results.base, results.finetuned)}
    for name, files in (panel or {}).items():
        tuned = files["finetuned"]
        judged = tuned[0] if seeds is None else dict(zip(seeds, tuned, strict=True))
        runs[name] = (load_run(files["base"], analysis), load_run(judged, analysis))
    return runs


def _sweep_section(sweep_csv: str | None, results: ExperimentResults, here: str) -> str:
    if sweep_csv is None:
        return ""
    png = os.path.relpath(os.path.splitext(sweep_csv)[0] + ".png", here)
    base_em = results.base.metrics["em_rate"]  # the estimate results.md reports already
    return sweep_markdown(pd.read_csv(sweep_csv), base_em, results.analysis, png)


def write_experiment_results(
    experiment: str,
    *,
    base_judged: str,
    base_usage: str,
    finetuned_judged: Sequence[str],
    finetuned_usage: Sequence[str],
    seeds: Sequence[int] | None,
    training_curves: str,
    results_md: str,
    question_scores: str,
    report: Mapping[str, Any],
    question_em_rates: str | None = None,
    training_system_prompt: str | None = None,
    sweep_csv: str | None = None,
    dose_csv: str | None = None,
    panel: Mapping[str, Mapping[str, Any]] | None = None,
    human_labels: str | None = None,
    log_histories: Sequence[str] = (),
    answers_page: str | None = None,
    capabilities: Mapping[str, Any] | None = None,
) -> None:
    """The `results` rule: an experiment's results.md and per-question plots, beside its config.

    `seeds` is None for a single run (one judged CSV); for replicates it lists the training
    seeds in the order of the judged CSVs, usage files and `log_histories` (each run's
    log_history.json: results.md says when a run stopped early). Where some question was
    answered more than once, the per-question EM rates are also drawn, to `question_em_rates`
    (default: QUESTION_EM_RATES beside results.md); otherwise a stale figure there is removed, since
    results.md no longer links it. `panel` maps each extra judge's name to its {"base": judged
    CSV, "finetuned": [judged CSV of each run, in seed order]}; results.md then has a "Judges"
    section (the headline numbers stay the primary judge's), and with each judge's usage JSON
    ("base_usage", "finetuned_usage") "Judge usage" shows what each judge cost.
    `human_labels` (emflow.report.human_labels), where given, adds each judge's agreement with
    people's labels ("Human labels"). `dose_csv`, the `dose` rule's table, adds the adapter
    dose-response section (emflow.report.dose). `answers_page`, the experiment's answer page
    (rule answers), is linked under the metrics. `capabilities` ({"base": capabilities.json,
    "finetuned": [each run's]}, the capabilities stage) adds the "Capabilities" section.
    """
    analysis = Analysis.from_report_config(report)
    if seeds is None:
        finetuned: Judged | JudgedSeeds = finetuned_judged[0]
    else:
        finetuned = dict(zip(seeds, finetuned_judged, strict=True))
    usage: Mapping[str, Any] | PanelUsage = _usage(base_usage, finetuned_usage, seeds)
    if panel and all("base_usage" in files for files in panel.values()):
        # Each judge's cost, then the primary's table (a panel without usage files: as before).
        usage = PanelUsage(
            {PRIMARY: usage}
            | {
                name: _usage(files["base_usage"], files["finetuned_usage"], seeds)
                for name, files in panel.items()
            }
        )
    results = experiment_results(base_judged, finetuned, analysis)
    plot_question_scores(
        results.base.frames,
        results.finetuned.frames,
        question_scores,
        title=experiment,
        demo=report["demo"],
        thresholds=analysis.thresholds,
        metrics=analysis.metrics,
    )
    # Links relative to results.md, so that they work wherever the experiment folder is viewed.
    here = os.path.dirname(results_md)
    plots = [
        ("Scores per question, fine-tuned vs base model", question_scores),
        ("Training curves", training_curves),
    ]
    em_png = question_em_rates or os.path.join(here, QUESTION_EM_RATES)
    if results.question_em is not None:
        plot_question_em(
            results.question_em.targets(pooled_label(results.finetuned)),
            em_png,
            title=experiment,
            questions=results.question_em.questions,
            confidence=1 - analysis.alpha,
            em=analysis.thresholds.em,
            demo=report["demo"],
        )
        plots.insert(1, ("EM rate per question, fine-tuned vs base model", em_png))
    elif question_em_rates is not None:
        raise EmflowError(
            f"{experiment}: the workflow asks for the EM rate per question, but no question of "
            "the judged CSVs has more than one answer; regenerate with the current question sets."
        )
    else:
        Path(em_png).unlink(missing_ok=True)
    runs = _judge_runs(results, panel, seeds)
    text = results_markdown(
        results,
        title=experiment,
        usage=usage,
        demo=report["demo"],
        plots=[(text, os.path.relpath(path, here)) for text, path in plots],
        answers=os.path.relpath(answers_page, here) if answers_page else None,
        capabilities=(
            capabilities_section(experiment_capability_rows(capabilities), demo=report["demo"])
            if capabilities
            else ()
        ),
        training_system_prompt=training_system_prompt,
        early_stop=early_stop_line(
            {
                f"seed {seed}" if seeds else "the run": read_log_history(path)
                for seed, path in zip(seeds or [None], log_histories, strict=False)
            }
        ),
        # The dose-response section (emflow.report.dose, `dose_csv`) follows the sweep's.
        sweep="\n\n".join(
            s
            for s in (
                _sweep_section(sweep_csv, results, here),
                dose_section(dose_csv, results.base.metrics["em_rate"], results.analysis, here),
            )
            if s
        ),
        judges=panel_agreement(runs, analysis) if panel else None,
        human=human_agreement(human_labels, runs, analysis) if human_labels else None,
        noise=judge_noise(
            runs,
            {PRIMARY: base_usage}
            | {name: f.get("base_usage") for name, f in (panel or {}).items()},
            analysis,
            results.passed,
        ),
    )
    write_text_atomic(results_md, text)
