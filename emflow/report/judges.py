"""results.md's "Judges" section: a judge panel's metrics and agreement
(`emflow.report.agreement`) as text. Present only where the config names a panel, so a one-judge
results.md is unchanged. Also each judge against people's labels ("Human labels",
`emflow.report.human_labels`), present only where the experiment has a labels file."""

from __future__ import annotations

from emflow.report.agreement import AGREEMENT_NOTE, PRIMARY, PairAgreement, PanelAgreement
from emflow.report.analysis import Analysis
from emflow.report.human_labels import HumanAgreement
from emflow.report.judge_noise import TARGETS, PanelNoise
from emflow.report.metrics import EM_RATE
from emflow.report.tables import fmt_estimate, fmt_value, markdown_table


def _confusion_cell(pair: PairAgreement) -> str:
    (nn, ny), (yn, yy) = pair.confusion.tolist()
    return f"{yy} / {yn} / {ny} / {nn}"


def judges_section(panel: PanelAgreement, analysis: Analysis) -> str:
    """The "Judges" section: each judge's metrics, each pair's agreement, the top disagreements."""
    level, scores = analysis.level, panel.metrics.scores
    shown = [*scores, panel.metrics["em_rate"]]
    rows = [
        (
            f"{judge.name}{' (headline)' if judge.name == PRIMARY else ''}",
            who,
            str(m.n_answers),
            *(fmt_estimate(m[metric.name], metric.kind) for metric in shown),
        )
        for judge in panel.judges
        for who, m in (("base model", judge.base), ("fine-tuned", judge.finetuned))
    ]
    judge_table = markdown_table(
        ["judge", "model", "n", *(f"{m.header} [{level}% CI]" for m in shown)], rows
    )
    pair_rows = [
        (
            f"{p.a} vs {p.b}",
            *(f"{fmt_value(p.alpha[m.name], 'score')} (n={p.n[m.name]})" for m in scores),
            f"{fmt_value(p.kappa, 'score')} (n={p.n_em})",
            _confusion_cell(p),
        )
        for p in panel.pairs
    ]
    pair_table = markdown_table(
        [
            "judges (a vs b)",
            *(f"alpha {m.header}" for m in scores),
            "kappa EM",
            "EM both / a only / b only / neither",
        ],
        pair_rows,
    )
    worst = []
    for p in panel.pairs:
        for row in p.disagreements.itertuples(index=False):
            row = row._asdict()
            seed = "" if row["seed"] is None else f", seed {row['seed']}"
            scored = "; ".join(
                f"{m.header} {row[f'{m.name}_cell_a']} vs {row[f'{m.name}_cell_b']}" for m in scores
            )
            worst.append((f"{p.a} vs {p.b}", f"{row['target']}{seed}", f"`{row['id']}`", scored))
    lines = [
        "### Judges",
        "",
        "The headline numbers above are the primary judge's; the panel re-scores the same answers.",
        "",
        judge_table,
        "",
        pair_table,
        "",
    ]
    if worst:
        lines += [
            "Answers each pair disagrees on most (largest absolute aligned difference):",
            "",
            markdown_table(["judges (a vs b)", "model", "id", "scores (a vs b)"], worst),
            "",
        ]
    lines.append(
        f"- Judges' CIs: as the Metrics table's. Agreement: {AGREEMENT_NOTE}; n: the answers "
        "counted; n/a: undefined (fewer than two answers, or one value only)."
    )
    return "\n".join(lines)


def noise_section(noise: PanelNoise, analysis: Analysis) -> str:
    """The "Judge noise" section: each sampled judge's spread between its own draws of an
    answer, its share of each CI, and how often one-draw re-judging flips the verdict."""
    shown = [*analysis.metrics.scores, EM_RATE]
    rows = [
        (
            f"{j.name}{' (headline)' if j.name == PRIMARY else ''}",
            str(j.k),
            target,
            metric.header,
            "-" if m.n_spread == 0 else f"{fmt_value(m.spread, 'score')} (n={m.n_spread})",
            fmt_value(m.ci_sd, metric.kind),
            fmt_value(m.judge_sd, metric.kind),
            fmt_value(m.judge_share, "share"),
        )
        for j in noise.judges
        for target in TARGETS
        for metric in shown
        for m in [j.targets[target][metric.name]]
    ]
    headline = "PASS" if noise.headline_passed else "FAIL"
    flips = [
        (
            f"{j.name}{' (headline)' if j.name == PRIMARY else ''}",
            str(j.k),
            str(j.n_rejudged),
            fmt_value(j.pass_share, "share"),
            fmt_value(j.flip_share, "share"),
        )
        for j in noise.judges
    ]
    said = "; ".join(
        f"{fmt_value(j.flip_share, 'share')} of re-judgings by {j.name}" for j in noise.judges
    )
    seeds = (
        " Fine-tuned seeds: within-answer SDs pool the seeds' answers; the draw bootstrap "
        "takes the mean over seeds of each seed's metric, as the Metrics table does, and its "
        "CI's SD is the seeds' standard error."
        if noise.replicated
        else ""
    )
    return "\n".join(
        [
            "### Judge noise",
            "",
            f"A judge that answers k times per answer (`samples: k`) shows its own noise. "
            f"Re-judging the fine-tuned answers with one draw per answer, as the homework's judge "
            f"(`samples: 1`) does, would change the verdict ({headline}) in {said}. A judge's "
            "share near 0: its CIs are the answers' noise, not the judge's; near 100%: "
            "re-judging the same answers moves the metric as much as new answers would.",
            "",
            markdown_table(
                [
                    "judge",
                    "k",
                    "model",
                    "metric",
                    "within-answer SD (n)",
                    "CI's SD",
                    "judge draws' SD",
                    "judge's share",
                ],
                rows,
            ),  # fmt: skip
            "",
            markdown_table(
                ["judge", "k", "re-judgings", "PASS", f"verdict differs from {headline}"], flips
            ),
            "",
            "- Within-answer SD: the mean over answers of the sample SD (n - 1) of an answer's "
            "numeric draws; n: the answers with at least two.",
            "- CI's SD: the standard error behind the Metrics (or Judges) table's CI: the "
            "bootstrap over questions and answers, each answer's score fixed. Judge draws' SD: "
            f"the answers fixed, each answer's k draws resampled with replacement and "
            f"re-aggregated by the judge's rule (the mean of the numbers unless a label is the "
            f"majority), {noise.n_resamples} resamples, seed {noise.seed}. Judge's share: "
            "(judge draws' SD / CI's SD)^2, at most 100%." + seeds,
            f"- Re-judgings: {noise.n_resamples} times, each fine-tuned answer's aligned and "
            "coherent score replaced by one of its k draws picked at random, and the homework's "
            "verdict computed as the headline's (same rows, same thresholds); the last column "
            "compares with the headline (the primary judge's) verdict.",
        ]
    )


def human_section(human: HumanAgreement, analysis: Analysis) -> str:
    """The "Human labels" section: each judge (the primary first) against people's labels."""
    scores = analysis.metrics.scores
    rows = []
    for j in human.judges:
        (nn, ny), (yn, yy) = j.confusion.tolist()
        rows.append(
            (
                f"{j.judge}{' (headline)' if j.judge == PRIMARY else ''}",
                *(
                    cell
                    for m in scores
                    for cell in (
                        f"{fmt_value(j.scores[m.name].alpha, 'score')} (n={j.scores[m.name].n})",
                        fmt_value(j.scores[m.name].mae, "score"),
                    )
                ),
                f"{fmt_value(j.kappa, 'score')} (n={j.n_em})",
                fmt_value(j.agreement, "share"),
                f"{yy} / {yn} / {ny} / {nn}",
            )
        )
    headers = [
        "judge",
        *(h for m in scores for h in (f"alpha {m.header}", f"MAE {m.header}")),
        "kappa EM",
        "EM agreement",
        "EM both / people only / judge only / neither",
    ]
    answers = ", ".join(f"{n} {target}" for target, n in human.answers.items() if n)
    answers = f"{sum(human.answers.values())} answers ({answers})"
    derived = (
        f" For {human.n_derived_em} answers without an `em` label, the people's EM label comes "
        f"from their scores by the report's rule ({analysis.thresholds.em.describe()})."
        if human.n_derived_em
        else ""
    )
    return "\n".join(
        [
            "### Human labels",
            "",
            f"Each judge against people's labels (`{human.source}` beside the config): "
            f"{human.n_labels} labels of {answers}.{derived}",
            "",
            markdown_table(headers, rows),
            "",
            "- alpha: Krippendorff's alpha (interval; the `krippendorff` package) of the judge's "
            "score and the person's; MAE: their mean absolute difference in score points; kappa: "
            "Cohen's kappa (scikit-learn) of the EM label; EM agreement: the share of answers "
            "both label alike. An answer the judge could not score (CODE, REFUSAL, invalid) is "
            "left out of that metric's numbers; n: the answers counted; n/a: undefined (fewer "
            "than two answers, or one value only).",
        ]
    )
