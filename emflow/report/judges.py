"""results.md's "Judges" section: a judge panel's metrics and agreement
(`emflow.report.agreement`) as text. Present only where the config names a panel, so a one-judge
results.md is unchanged."""

from __future__ import annotations

from emflow.report.agreement import AGREEMENT_NOTE, PRIMARY, PairAgreement, PanelAgreement
from emflow.report.analysis import Analysis
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
