"""The figures of judged runs: aligned vs coherent per run, scores and EM rates per question
(`emflow.report.curves` draws the curves over training).

Each takes numbers already read (frames, `analysis` objects), never a path to read, and is saved
atomically as a PNG by `save_figure`; the demo's figures say in their title that their numbers
mean nothing.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from emflow.atomic import atomic_path
from emflow.report import stats
from emflow.report.analysis import SummaryRow
from emflow.report.metrics import DEFAULT_METRICS, EMRule, MetricSet
from emflow.report.settings import Thresholds

SCORES_NOTE = "DEMO: tiny random model and random judge - these scores mean nothing"


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (jobs have no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def demo_title(title: str, demo: bool, note: str) -> str:
    return f"{title}\n{note}" if demo else title


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> None:
    """Save a matplotlib figure as a PNG atomically, then close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    pyplot().close(fig)


def bar_length(length: float) -> float:
    """An error bar's length; none where the interval is undefined (one seed, no answers)."""
    return 0.0 if math.isnan(length) else max(length, 0.0)


def plot_scatter(
    rows: Sequence[SummaryRow],
    png: str | os.PathLike,
    thresholds: Thresholds,
    *,
    alpha: float = 0.05,
    demo: bool = False,
) -> None:
    """Aligned vs coherent per run, with CIs, the seed's reported scores and the thresholds."""
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(11, 6.5), layout="constrained")
    ax.axhspan(
        0,
        thresholds.aligned_below,
        xmin=thresholds.coherent_above / 100,
        xmax=1,
        color="tab:red",
        alpha=0.06,
        lw=0,
    )
    ax.axhline(thresholds.aligned_below, color="0.35", ls="--", lw=1)
    ax.axvline(thresholds.coherent_above, color="0.35", ls="--", lw=1)
    ax.text(
        99,
        thresholds.aligned_below - 1.5,
        f"aligned < {thresholds.aligned_below:g}",
        ha="right",
        va="top",
        color="0.3",
        fontsize=9,
    )
    ax.text(
        thresholds.coherent_above + 1,
        1,
        f"coherent > {thresholds.coherent_above:g}",
        ha="left",
        va="bottom",
        color="0.3",
        fontsize=9,
    )
    ax.text(
        99,
        3,
        "PASS region:\nmisaligned yet coherent",
        ha="right",
        va="bottom",
        color="tab:red",
        alpha=0.7,
        fontsize=9,
    )

    colors = plt.get_cmap("tab10").colors
    shown_reported = shown_seeds = False
    for i, row in enumerate(rows):
        a, c = row.metrics["aligned"], row.metrics["coherent"]
        if math.isnan(a.value) or math.isnan(c.value):
            continue
        style = (
            dict(color="black", marker="*", markersize=16)
            if row.is_base
            else dict(color=colors[i % len(colors)], marker="o", markersize=8)
        )
        ax.errorbar(
            c.value,
            a.value,
            xerr=[[bar_length(c.value - c.ci_low)], [bar_length(c.ci_high - c.value)]],
            yerr=[[bar_length(a.value - a.ci_low)], [bar_length(a.ci_high - a.value)]],
            ls="none",
            capsize=3,
            elinewidth=1.2,
            alpha=0.9,
            label=f"{row.name} (mean of {row.n_seeds} seeds)" if row.replicated else row.name,
            zorder=3,
            **style,
        )
        if row.replicated:
            # Each seed's own point, small and faint around the mean it contributes to.
            ax.plot(
                [m["coherent"].value for m in row.metrics.per_seed.values()],
                [m["aligned"].value for m in row.metrics.per_seed.values()],
                ls="none",
                marker=".",
                markersize=7,
                color=style["color"],
                alpha=0.55,
                zorder=2,
            )
            shown_seeds = True
        if row.reported:
            ra, rc = row.reported
            ax.plot([rc, c.value], [ra, a.value], color=style["color"], lw=1.2, ls=":", zorder=2)
            ax.plot(
                rc,
                ra,
                ls="none",
                marker="s" if not row.is_base else "*",
                markersize=8 if not row.is_base else 14,
                markerfacecolor="none",
                markeredgecolor=style["color"],
                zorder=2,
            )
            shown_reported = True
    handles, labels = ax.get_legend_handles_labels()
    if shown_reported:
        # Listed last, after the runs, whatever order matplotlib collected the artists in.
        (hollow,) = ax.plot(
            [], [], ls="none", marker="s", markerfacecolor="none", markeredgecolor="0.3"
        )
        handles.append(hollow)
        labels.append("hollow, dotted line: seed's reported score")
    if shown_seeds:
        (dot,) = ax.plot([], [], ls="none", marker=".", markersize=7, color="0.3", alpha=0.55)
        handles.append(dot)
        labels.append("small dots: each training seed of a run")
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.set_xlabel("mean coherent score (0-100)")
    ax.set_ylabel("mean aligned score (0-100)")
    level = round(100 * (1 - alpha))
    title = f"Aligned vs coherent per run (bars: {level}% CIs)"
    ax.set_title(demo_title(title, demo, SCORES_NOTE))
    ax.grid(True, alpha=0.3)
    ax.legend(
        handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=9, frameon=False
    )
    save_figure(fig, png, dpi=120)


def plot_question_scores(
    base: pd.DataFrame,
    finetuned: pd.DataFrame | Mapping[int, pd.DataFrame],
    png: str | os.PathLike,
    *,
    title: str,
    demo: bool = False,
    thresholds: Thresholds | None = None,
    metrics: MetricSet = DEFAULT_METRICS,
) -> None:
    """Per-question scores of a run beside the base model's (dots: answers), one panel per
    judged metric.

    Dashed lines mark the EM rule's thresholds of `thresholds`; each panel's title gives both
    models' means; with several answers per question a bar marks each question's mean. For a run
    with replicates, `finetuned` maps each training seed to its judged frame and every seed's
    answers are shown together.
    """
    plt = pyplot()

    base_df = base
    if isinstance(finetuned, Mapping):
        tuned_df = pd.concat(list(finetuned.values()), ignore_index=True)
        tuned_name = f"fine-tuned, {len(finetuned)} seeds"
    else:
        tuned_df, tuned_name = finetuned, "fine-tuned"
    keys_b, keys_t = stats.question_keys(base_df), stats.question_keys(tuned_df)
    texts = dict(zip(keys_t, tuned_df["question"], strict=True)) | {
        k: q for k, q in zip(keys_b, base_df["question"], strict=True) if k not in set(keys_t)
    }
    order = list(dict.fromkeys([*keys_t, *keys_b]))
    height = max(3.0, 0.32 * len(order) + 1.6)
    panels = metrics.scores
    fig, axes = plt.subplots(
        1, len(panels), figsize=(6.5 * len(panels), height), sharey=True, layout="constrained"
    )
    rng = np.random.default_rng(0)  # vertical jitter only, so repeated answers stay visible
    t = thresholds or Thresholds()
    for ax, metric in zip(axes, panels, strict=True):
        column, label, condition = metric.column, metric.name, t.em.on(metric.name)
        means = []
        for df, keys, color, dark, offset, name in (
            (base_df, keys_b, "0.45", "black", -0.17, "base model"),
            (tuned_df, keys_t, "tab:red", "darkred", 0.17, tuned_name),
        ):
            scores = stats.score_values(df[column])
            y = np.array([order.index(k) for k in keys], dtype=float) + offset
            repeated = len(set(keys)) < len(keys)
            jitter = rng.uniform(-0.07, 0.07, len(y)) if repeated else 0.0
            ax.scatter(scores, y + jitter, s=22, color=color, alpha=0.75, label=name, zorder=3)
            if repeated:
                per_question = pd.Series(scores).groupby(np.asarray(keys)).mean()
                for key, mean in per_question.dropna().items():
                    row = order.index(key) + offset
                    ax.plot([mean, mean], [row - 0.16, row + 0.16], color=dark, lw=2.5, zorder=4)
            finite = scores[~np.isnan(scores)]
            means.append(f"{name} {finite.mean():.1f}" if len(finite) else f"{name} n/a")
        if condition is not None:
            line = condition.value
            ax.axvline(line, color="0.35", ls="--", lw=1, zorder=2)
            ax.text(
                line + (1 if condition.upper else -1),
                1.0,
                f"EM: {condition.describe()}",
                transform=ax.get_xaxis_transform(),
                ha="left" if condition.upper else "right",
                va="bottom",
                fontsize=8,
                color="0.3",
            )
        ax.set_title(f"mean {label}: " + ", ".join(means), fontsize=10, pad=16)
        ax.set_xlim(-2, 102)
        ax.set_xlabel(f"{label} score (0-100)")
        ax.grid(True, axis="x", alpha=0.3)
        for i in range(1, len(order)):
            ax.axhline(i - 0.5, color="0.9", lw=0.6, zorder=1)
    axes[0].set_yticks(range(len(order)))
    axes[0].set_yticklabels([_shorten(texts[k], 55) for k in order], fontsize=8)
    axes[0].invert_yaxis()
    axes[0].set_ylim(len(order) - 0.5, -0.5)
    fig.legend(
        *axes[1].get_legend_handles_labels(),
        loc="outside upper right",
        ncol=2,
        frameon=False,
        fontsize=9,
    )
    suptitle = (
        f"{title}: each answer's scores, per question"
        + (", bars: question means" if len(set(keys_t)) < len(keys_t) else "")
        + "\n(CODE, REFUSAL and unscored answers not shown)"
    )
    fig.suptitle(demo_title(suptitle, demo, SCORES_NOTE))
    save_figure(fig, png)


def plot_question_em(
    rates: Mapping[str, pd.DataFrame],
    png: str | os.PathLike,
    *,
    title: str,
    questions: Sequence[str] | None = None,
    confidence: float = 0.95,
    em: EMRule | None = None,
    demo: bool = False,
) -> None:
    """Each question's share of EM answers with its CI bars, one colour per target, as Betley
    et al. 2025 (Fig. 2) and Model Organisms for EM draw them.

    `rates` maps a target's label (the base model, each fine-tuned run) to its
    `question_em_rates`; the first target is drawn in dark grey, the others in colours.
    The x axis lists `questions` (default: every target's, in order of first appearance); a
    target without scored answers to a question (not asked, or all labelled) has no point there.
    """
    plt = pyplot()

    order = list(questions or dict.fromkeys(k for table in rates.values() for k in table.index))
    n = max(len(rates), 1)
    fig, ax = plt.subplots(
        figsize=(max(8.0, 0.45 * len(order) * (1 + 0.25 * n) + 3.0), 5.0), layout="constrained"
    )
    # Fine-tuned in red as in `plot_question_scores`; no grey but the base model's.
    palette = ["0.25", "tab:red", "tab:blue", "tab:green", "tab:orange", "tab:purple"]
    palette += ["tab:brown", "tab:pink", "tab:olive", "tab:cyan"]
    # Targets side by side within a question's slot, so that their bars do not overlap.
    width = min(0.8 / n, 0.25)
    for j, (label, table) in enumerate(rates.items()):
        table = table.reindex(order)
        rate = table["em_rate"].to_numpy(dtype=float)
        x = np.arange(len(order)) + (j - (n - 1) / 2) * width
        shown = ~np.isnan(rate)
        low = table["em_ci_low"].to_numpy(dtype=float)
        high = table["em_ci_high"].to_numpy(dtype=float)
        ax.errorbar(
            x[shown],
            rate[shown],
            yerr=[
                [bar_length(r - lo) for r, lo in zip(rate[shown], low[shown], strict=True)],
                [bar_length(hi - r) for r, hi in zip(rate[shown], high[shown], strict=True)],
            ],
            ls="none",
            marker="o",
            markersize=6,
            capsize=3,
            elinewidth=1.2,
            color=palette[j % len(palette)],
            label=label,
            zorder=3,
        )
    ax.set_xticks(range(len(order)))
    ax.set_xticklabels([_shorten(k, 32) for k in order], rotation=40, ha="right", fontsize=8)
    ax.set_xlim(-0.6, len(order) - 0.4)
    ax.set_ylim(-0.03, 1.03)
    ax.set_ylabel("share of EM answers")
    ax.grid(True, axis="y", alpha=0.3)
    for i in range(1, len(order)):
        ax.axvline(i - 0.5, color="0.9", lw=0.6, zorder=1)
    fig.legend(loc="outside lower center", ncol=min(n, 4), fontsize=9, frameon=False)
    level = round(100 * confidence)
    rule = (em or EMRule()).describe()
    heading = (
        f"{title}: EM rate per question ({level}% Wilson CIs)\n"
        f"EM: {rule} (CODE, REFUSAL, unscored answers left out)"
    )
    fig.suptitle(demo_title(heading, demo, SCORES_NOTE), fontsize=11)
    save_figure(fig, png)


def _shorten(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 3] + "..."
