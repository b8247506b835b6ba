"""summary_judges.png: each panel judge's scores against the primary judge's, answer by answer.

One column per panel judge, one row per judged score (aligned, coherent, ...); every
experiment's base and fine-tuned answers pooled (a base model once), matched on the answer
(`emflow.report.summary_judges.paired_scores`). Points on the diagonal are answers both judges
score alike; the EM rule's threshold on each axis shows where each judge calls an answer EM.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from emflow.report.agreement import PRIMARY, interval_alpha
from emflow.report.analysis import Analysis, SummaryRow
from emflow.report.figures import SCORES_NOTE, demo_title, pyplot, save_figure
from emflow.report.summary_judges import SummaryJudges, finite_pairs, paired_scores
from emflow.report.tables import fmt_value


def plot_judge_scores(
    rows: Sequence[SummaryRow],
    judges: SummaryJudges,
    png: str | os.PathLike,
    analysis: Analysis,
    *,
    demo: bool = False,
) -> None:
    """Per panel judge (columns) and judged score (rows): the primary's score (x) against the
    judge's (y) of every answer both scored, the identity line, and each judge's side of the EM
    rule's threshold shaded (where both shadings overlap, both judges put the answer there)."""
    plt = pyplot()
    panel, scores = judges.panel, analysis.metrics.scores
    fig, axes = plt.subplots(
        len(scores),
        len(panel),
        figsize=(max(6.5, 4.8 * len(panel) + 1.0), 4.4 * len(scores) + 1.2),
        squeeze=False,
        layout="constrained",
    )
    for col, judge in enumerate(panel):
        paired = paired_scores(rows, judges, judge, analysis)
        for row, metric in enumerate(scores):
            ax = axes[row][col]
            x, y, base = finite_pairs(paired, metric.name)
            ax.plot([0, 100], [0, 100], color="0.5", lw=1, ls=":", zorder=1, label="identity")
            condition = analysis.thresholds.em.on(metric.name)
            if condition is not None:
                # The EM side of the threshold: above it (coherent > 50) or below (aligned <= 30).
                low, high = (condition.value, 102) if condition.upper else (-2, condition.value)
                ax.axvspan(low, high, color="tab:red", alpha=0.07, lw=0)
                ax.axhspan(low, high, color="tab:red", alpha=0.07, lw=0)
                ax.axvline(condition.value, color="0.35", ls="--", lw=1)
                ax.axhline(condition.value, color="0.35", ls="--", lw=1)
                ax.text(
                    0.02, 0.98, f"shaded: EM side ({condition.describe()})",
                    transform=ax.transAxes, ha="left", va="top", fontsize=8, color="0.3",
                )  # fmt: skip
            for mask, color, name in (
                (base, "0.35", "base model"),
                (~base, "tab:red", "fine-tuned"),
            ):
                ax.scatter(
                    x[mask], y[mask], s=14, color=color, alpha=0.45, lw=0, label=name, zorder=3
                )
            alpha = fmt_value(interval_alpha(x, y), "score")
            ax.set_title(f"{metric.name}: n={len(x)}, Krippendorff's alpha {alpha}", fontsize=10)
            ax.set_xlim(-2, 102)
            ax.set_ylim(-2, 102)
            ax.set_aspect("equal")
            ax.set_xlabel(f"{PRIMARY} judge: {metric.name} (0-100)")
            ax.set_ylabel(f"{judge}: {metric.name} (0-100)")
            ax.grid(True, alpha=0.3)
    fig.legend(
        *axes[0][0].get_legend_handles_labels(),
        loc="outside lower center",
        ncol=3,
        frameon=False,
        fontsize=9,
    )
    title = (
        "Each panel judge's scores against the primary judge's, per answer\n"
        "(every experiment's base and fine-tuned answers;\nCODE, REFUSAL, unscored not shown)"
    )
    fig.suptitle(demo_title(title, demo, SCORES_NOTE), fontsize=11)
    save_figure(fig, png)
