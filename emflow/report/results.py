"""The text of one experiment's results.md (`results_markdown`) and its sections.

results.md begins with exactly the two blocks of the seed's files (so old and new results diff
cleanly), then the threshold verdict, the statistics of `emflow.report.stats`, each question's
EM rate (only for question sets answered several times per question), the checkpoint sweep
and the judge's usage. The numbers are `emflow.report.analysis.experiment_results`; the
`results` rule that reads the files, draws the figures and writes results.md is
`emflow.report.experiment.write_experiment_results`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from emflow.report import stats
from emflow.report.agreement import PanelAgreement
from emflow.report.analysis import Analysis, ExperimentResults, JudgedRun
from emflow.report.human_labels import HumanAgreement
from emflow.report.judge_noise import PanelNoise
from emflow.report.judged import format_scores, verdict
from emflow.report.judges import human_section, judges_section, noise_section
from emflow.report.metrics import SHARES, EMRule
from emflow.report.per_question import QUESTION_EM_INTERVAL, QUESTION_MEAN_INTERVAL
from emflow.report.tables import (
    DEMO_NOTICE,
    PanelUsage,
    fmt_difference,
    fmt_estimate,
    fmt_p,
    fmt_question_em,
    fmt_question_mean,
    fmt_value,
    markdown_table,
    usage_markdown,
)
from emflow.report.training import first_em_step

EM_RULE_SOURCE = " (the paper's code, `get_basic_eval_stats`)"


# ---------------------------------------------------------------------------------------------
# results.md's text


def results_markdown(
    results: ExperimentResults,
    *,
    title: str,
    usage: Mapping[str, Any] | PanelUsage | None = None,
    demo: bool = False,
    plots: Sequence[tuple[str, str]] = (),
    answers: str | None = None,
    capabilities: Sequence[str] = (),
    training_system_prompt: str | None = None,
    sweep: str = "",
    judges: PanelAgreement | None = None,
    human: HumanAgreement | None = None,
    noise: PanelNoise | None = None,
    early_stop: str = "",
) -> str:
    """A run's results.md: the seed's two blocks, the verdict, metrics with CIs, judge usage.

    `plots` lists (description, path relative to results.md) of images to link; `answers` is
    the answer page's path relative to results.md (emflow.report.answers), linked under the
    metrics; `capabilities`, the lines of the capability checks' section (emflow.report.
    capabilities), follow the metrics;
    `training_system_prompt` is the experiment's inoculation prompt, if any; `sweep` the
    checkpoint sweep's section (emflow.sweeps.sweep_markdown), if any; `judges` a judge panel's
    metrics and agreement (its section only where there is a panel); `human` each judge's
    agreement with people's labels (its section only where the experiment has labels); `noise`
    the noise of each judge that draws several times per answer (its section only where one
    does); `early_stop` the line saying a run stopped training early (emflow.report.training.
    early_stop_line), if one did.
    """
    base, tuned, analysis = results.base, results.finetuned, results.analysis
    t = analysis.thresholds
    tuned_means = tuned.homework_means()
    passed, verdict_line = verdict(*tuned_means, t)
    seed_note = ""
    if tuned.replicated:
        seeds = tuned.metrics.seeds
        seed_note = (
            f" Fine-tuned scores are means over {len(seeds)} training seeds "
            f"({', '.join(map(str, seeds))}); {tuned.seeds_passing(t)} of {len(seeds)} "
            "seeds pass on their own."
        )
    parts = [
        # Byte for byte the seed's layout, so that a diff against the seed's files is clean.
        "=== BASE MODEL AVERAGE SCORES ===\n"
        f"{format_scores(*base.homework_means(rule='both'))}\n"
        "\n"
        "=== FINETUNED MODEL AVERAGE SCORES ===\n"
        f"{format_scores(*tuned_means)}",
        f"**{verdict_line[0].upper()}{verdict_line[1:]}**\n\n"
        f"The fine-tuned model {'passes' if passed else 'fails'}: a model organism of emergent "
        f"misalignment needs mean aligned < {t.aligned_below:g} and mean coherent > "
        f"{t.coherent_above:g}.{seed_note}",
    ]
    if demo:
        parts.append(f"> {DEMO_NOTICE}")
    parts.append(_metrics_section(results, title))
    if answers:
        parts.append(
            f"Every answer behind these numbers, with each judge's scores, to filter, search and "
            f"compare with the base model's: [{os.path.basename(answers)}]({answers})."
        )
    if results.seed_comparisons is not None:
        parts.append(_seeds_section(results))
    if capabilities:
        parts.append("\n".join(capabilities))
    if results.question_em is not None:
        parts.append(_question_em_section(results))
    if sweep:
        parts.append(sweep)
    if judges is not None:
        parts.append(judges_section(judges, results.analysis))
    if noise is not None:
        parts.append(noise_section(noise, results.analysis))
    if human is not None:
        parts.append(human_section(human, results.analysis))
    prompts = _prompts_section(results, training_system_prompt)
    if prompts:
        parts.append(prompts)
    if early_stop:
        parts.append(early_stop)
    if plots:
        parts.append("### Plots\n\n" + "\n\n".join(f"![{text}]({path})" for text, path in plots))
    parts.append("### Judge usage\n\n" + usage_markdown(usage))
    return "\n\n".join(parts) + "\n"


def _prompts_section(results: ExperimentResults, training_system_prompt: str | None) -> str:
    """Which system prompts the fine-tuned model was trained and evaluated with, read from the
    judged CSVs' `system` column (what the model saw); empty when none was used anywhere."""
    frames = [*results.base.frame_list(), *results.finetuned.frame_list()]
    used: dict[str, list[str]] = {}  # question set -> its distinct system prompts
    prompted: set[str] = set()  # question sets the fine-tuned run answered with its training prompt
    for df in frames:
        if "system" not in df.columns:
            continue
        sets = df["question_set"] if "question_set" in df.columns else [""] * len(df)
        added = df.get("training_prompt", pd.Series([""] * len(df)))
        for name, system, prompt in zip(sets, df["system"], added, strict=True):
            if prompt:  # the run's training prompt (a set's training_prompt: true), named below
                prompted.add(name)
            elif system and system not in used.setdefault(name, []):
                used[name].append(system)
            used.setdefault(name, [])
    if training_system_prompt is None and not any(used.values()):
        return ""
    lines = [
        "### System prompts",
        "",
        "- Training (inoculation): "
        + (
            f"`{training_system_prompt}` (answers are generated without it unless a question "
            "set adds it)"
            if training_system_prompt
            else "none"
        ),
    ]
    for name, systems in used.items():
        shown = "; ".join(f"`{s}`" for s in systems) if systems else "none"
        lines.append(f"- Evaluation, set `{name or '(unnamed)'}`: {shown}")
        if name in prompted:
            lines[-1] += " (base model); the fine-tuned run: its training prompt, placed as trained"
    return "\n".join(lines)


def _metrics_section(results: ExperimentResults, title: str) -> str:
    base, tuned, analysis = results.base, results.finetuned, results.analysis
    t, alpha, n_resamples = analysis.thresholds, analysis.alpha, analysis.n_resamples
    rows = []
    for metric in analysis.metrics.all:
        c, kind = results.comparisons[metric.name], metric.kind
        rows.append(
            (
                metric.label,
                fmt_estimate(base.metrics[metric.name], kind),
                fmt_estimate(tuned.metrics[metric.name], kind),
                fmt_difference(c, kind),
                fmt_p(c.p_value) + (" *" if c.significant else ""),
            )
        )
    m = tuned.metrics
    if tuned.replicated:
        tuned_header = f"fine-tuned (mean of {tuned.n_seeds} seeds)"
        answers = (
            f"fine-tuned: {m.n_answers} answers to {m.n_questions} questions from "
            f"{tuned.n_seeds} seeds"
        )
        intervals = (
            f"- CIs: base model: percentile bootstrap, {n_resamples} resamples (questions, then "
            f"answers within each question), seed {analysis.seed}; fine-tuned: Student t interval "
            "of the mean across seeds (the seeds' spread is the noise); difference: Welch's t "
            f"interval.\n- p: {stats.WELCH_TEST}; * marks p < {alpha:g} (outside the noise)."
        )
    else:
        tuned_header = "fine-tuned"
        answers = f"fine-tuned: {m.n_answers} answers to {m.n_questions} questions"
        intervals = (
            f"- CIs: percentile bootstrap, {n_resamples} resamples (questions, then answers within "
            f"each question), seed {analysis.seed}; the difference's CI resamples each run on its "
            f"own.\n- p: {stats.COMPARISON_TEST}; * marks p < {alpha:g} (outside the noise)."
        )
    return (
        f"## {title}\n\n"
        f"### Metrics ({analysis.level}% CIs)\n\n"
        + markdown_table(["metric", "base model", tuned_header, "difference", "p"], rows)
        + "\n\n"
        f"- Base model: {base.metrics.n_answers} answers to {base.metrics.n_questions} questions; "
        f"{answers}.\n"
        "- The two blocks above: the homework grader's means and thresholds, each line by its "
        "own rule: BASE MODEL as `get_average_scores` (the rows whose two scores are both "
        "integers), FINETUNED MODEL as `evaluate_responses` (each metric over the rows where it "
        "is an integer); the table's means: each metric over its own scored answers.\n"
        f"- EM rate: share of scored answers with {t.em.describe()}"
        f"{EM_RULE_SOURCE if t.em == EMRule() else ''}. Means and EM rate leave out "
        "CODE, REFUSAL and invalid "
        "(empty or unusable) judgements; the shares count every answer.\n"
        f"{intervals}"
    )


def _seeds_section(results: ExperimentResults) -> str:
    """Each seed's own numbers, then their mean and spread across seeds."""
    metrics, analysis = results.finetuned.metrics, results.analysis
    averages = results.finetuned.seed_averages()
    shown, shares = analysis.metrics.shown, [m.name for m in SHARES]
    body = []
    for training_seed, m in metrics.per_seed.items():
        c = results.seed_comparisons[training_seed]
        passed = verdict(*averages[training_seed], analysis.thresholds)[0]
        body.append(
            (
                f"seed {training_seed}",
                *(
                    fmt_estimate(m[s.name], s.kind) + ("*" if c[s.name].significant else " ")
                    for s in shown
                ),
                " / ".join(fmt_value(m[name].value, "share") for name in shares),
                "PASS" if passed else "FAIL",
            )
        )
    for label, value in (
        ("mean", lambda name: metrics[name].value),
        ("SD across seeds", lambda name: metrics.spread[name].sd),
    ):
        body.append(
            (
                label,
                *(fmt_value(value(s.name), s.kind) + " " for s in shown),
                " / ".join(fmt_value(value(name), "share") for name in shares),
                "",
            )
        )
    level = analysis.level
    headers = [
        "training seed",
        *(f"{s.header} [{level}% CI]" for s in shown),
        " / ".join(m.header for m in SHARES),
        "verdict",
    ]
    return (
        "### Seeds\n\n" + markdown_table(headers, body) + "\n\n"
        "- Each seed's CIs: percentile bootstrap, as the base model's; * marks a seed that differs "
        f"from the base model outside the noise (p < {analysis.alpha:g}; "
        f"{stats.COMPARISON_TEST}).\n"
        "- SD across seeds: sample standard deviation of the seeds' values (n - 1)."
    )


def _rate_cells(rates: pd.DataFrame, question: str) -> tuple[str, str]:
    """A question's EM rate with its CI, and its scored / all answers; "-" where not asked."""
    if question not in rates.index:
        return "-", "-"
    row = rates.loc[question]
    return fmt_question_em(rates, question), f"{int(row['n_scored'])}/{int(row['n_answers'])}"


def pooled_label(run: JudgedRun) -> str:
    """How per-question tables and figures name a fine-tuned run: its seeds are pooled there."""
    return f"fine-tuned ({run.n_seeds} seeds pooled)" if run.replicated else "fine-tuned"


def _question_em_section(results: ExperimentResults) -> str:
    """The table of each question's EM rate, base model beside fine-tuned, and its legend."""
    q, tuned, analysis = results.question_em, results.finetuned, results.analysis
    level, rule = analysis.level, analysis.thresholds.em.describe()
    tuned_label = pooled_label(tuned)
    # The judged scores the EM rule does not read get their own means: the EM rate shows none
    # of them (by default, the papers' extra metrics; none for the homework's two).
    means = [m for m in analysis.metrics.scores if analysis.thresholds.em.on(m.name) is None]
    rows = [
        (
            question,
            *_rate_cells(q.base, question),
            *_rate_cells(q.finetuned, question),
            *(fmt_question_mean(r, question, m) for m in means for r in (q.base, q.finetuned)),
        )
        for question in q.questions
    ]
    headers = [
        "question id",
        f"base model EM rate [{level}% CI]",
        "n",
        f"{tuned_label} EM rate [{level}% CI]",
        "n",
        *(f"{who} {m.label} [{level}% CI]" for m in means for who in ("base model", tuned_label)),
    ]
    mean_note = (
        f"- {', '.join(m.label for m in means)}: over the question's scored answers; CIs: "
        f"{QUESTION_MEAN_INTERVAL}.\n"
        if means
        else ""
    )
    seeds = (
        f"- Fine-tuned: the {tuned.n_seeds} seeds' answers to each question pooled, so the "
        "interval leaves out the spread across seeds (the overall EM rate above has it).\n"
        if tuned.replicated
        else ""
    )
    return (
        "### EM rate per question\n\n" + markdown_table(headers, rows) + "\n\n"
        f"- EM rate: share of the question's scored answers with {rule}, as the overall EM "
        "rate (CODE, REFUSAL and invalid judgements left out); n: scored answers / all "
        "answers; -: not asked of that model.\n"
        f"- CIs: {QUESTION_EM_INTERVAL}; one interval per question, with no correction "
        "for multiple comparisons.\n"
        f"{mean_note}"
        f"{seeds}"
        "- Only the question sets answered more than once per question, in the order the "
        "questions appear in the fine-tuned judged CSV, then any asked of the base model only."
    )


def sweep_markdown(
    table: pd.DataFrame, base_em: stats.Estimate, analysis: Analysis, png: str | None = None
) -> str:
    """results.md's "Checkpoint sweep" section: a table of steps (mean over seeds for
    replicates) and the first step whose EM rate is outside the base model's noise.

    `table` is the sweep's (emflow.report.training.sweep_table, or its CSV read back);
    `base_em` the base model's EM-rate estimate, as results.md has it.
    """
    first = first_em_step(table, base_em.ci_high)
    seeds = table["seed"].nunique()
    means = table.groupby("step").mean(numeric_only=True)
    scores = analysis.metrics.scores
    rows = []
    for step, row in means.iterrows():
        ci = "" if seeds > 1 else f" [{row['em_rate_ci_low']:.1%}, {row['em_rate_ci_high']:.1%}]"
        rows.append(
            (
                str(int(step)),
                *(f"{row[m.name]:.1f}" for m in scores),
                f"{row['em_rate']:.1%}{ci}",
                f"{row['train_loss']:.3f}",
                f"{row['lora_norm']:.3f}",
            )
        )
    level = analysis.level
    headers = ["step", *(m.header for m in scores), f"EM rate [{level}% CI]", "training loss",
               "LoRA norm"]  # fmt: skip
    lines = [
        "### Checkpoint sweep",
        "",
        markdown_table(headers, rows),
        "",
        f"Base model: EM rate {base_em.value:.1%} [{base_em.ci_low:.1%}, "
        f"{base_em.ci_high:.1%}]. "
        + (
            f"**The EM rate is outside the base model's noise from step {first} on** (the first "
            f"step whose {level}% CI lies above the base model's)."
            if first is not None
            else "No step's EM rate is outside the base model's noise (no step's CI lies above "
            "the base model's)."
        )
        + (f" Means over {seeds} seeds." if seeds > 1 else "")
        + " LoRA norm: sqrt(sum over adapted modules of ||scaling B A||_F^2).",
    ]
    if png:
        lines += ["", f"![Checkpoint sweep]({png})"]
    return "\n".join(lines)
