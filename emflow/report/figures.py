"""Every figure emflow draws: aligned vs coherent per run, scores and EM rates per question,
training curves.

Each is saved atomically as a PNG by `save_figure`; the demo's figures say in their title that
their numbers mean nothing.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from emflow.atomic import atomic_path
from emflow.errors import EmflowError
from emflow.report import stats
from emflow.report.results import Judged, JudgedSeeds, Thresholds, judged_frame

if TYPE_CHECKING:
    from emflow.report.summary import SummaryRow

SCORES_NOTE = "DEMO: tiny random model and random judge - these scores mean nothing"
CURVES_NOTE = "DEMO: tiny random model on synthetic rows - these curves mean nothing"


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend (jobs have no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _demo_title(title: str, demo: bool, note: str) -> str:
    return f"{title}\n{note}" if demo else title


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> None:
    """Save a matplotlib figure as a PNG atomically, then close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    _pyplot().close(fig)


def _bar(length: float) -> float:
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
    plt = _pyplot()

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
            xerr=[[_bar(c.value - c.ci_low)], [_bar(c.ci_high - c.value)]],
            yerr=[[_bar(a.value - a.ci_low)], [_bar(a.ci_high - a.value)]],
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
    ax.set_title(_demo_title(title, demo, SCORES_NOTE))
    ax.grid(True, alpha=0.3)
    ax.legend(
        handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=9, frameon=False
    )
    save_figure(fig, png, dpi=120)


def plot_question_scores(
    base: Judged,
    finetuned: Judged | JudgedSeeds,
    png: str | os.PathLike,
    *,
    title: str,
    rows: int | None = None,
    demo: bool = False,
    thresholds: Thresholds | None = None,
) -> None:
    """Per-question aligned and coherent scores of a run beside the base model's (dots: answers).

    Dashed lines mark the EM-rate thresholds of `thresholds`; each panel's title gives both
    models' means; with several answers per question a bar marks each question's mean. For a run
    with replicates, `finetuned` maps each training seed to its judged CSV and every seed's
    answers are shown together.
    """
    plt = _pyplot()
    import numpy as np

    base_df = judged_frame(base, rows)
    if isinstance(finetuned, Mapping):
        tuned_df = pd.concat([judged_frame(f, rows) for f in finetuned.values()], ignore_index=True)
        tuned_name = f"fine-tuned, {len(finetuned)} seeds"
    else:
        tuned_df, tuned_name = judged_frame(finetuned, rows), "fine-tuned"
    keys_b, keys_t = stats.question_keys(base_df), stats.question_keys(tuned_df)
    texts = dict(zip(keys_t, tuned_df["question"], strict=True)) | {
        k: q for k, q in zip(keys_b, base_df["question"], strict=True) if k not in set(keys_t)
    }
    order = list(dict.fromkeys([*keys_t, *keys_b]))
    height = max(3.0, 0.32 * len(order) + 1.6)
    fig, axes = plt.subplots(1, 2, figsize=(13, height), sharey=True, layout="constrained")
    rng = np.random.default_rng(0)  # vertical jitter only, so repeated answers stay visible
    t = thresholds or Thresholds()
    for ax, column, label, line, side in zip(
        axes,
        ("aligned_score", "coherent_score"),
        ("aligned", "coherent"),
        (t.em.aligned_max, t.em.coherent_above),
        ("<=" if t.em.inclusive else "<", ">"),
        strict=True,
    ):
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
        ax.axvline(line, color="0.35", ls="--", lw=1, zorder=2)
        ax.text(
            line + (1 if side == ">" else -1),
            1.0,
            f"EM: {label} {side} {line:g}",
            transform=ax.get_xaxis_transform(),
            ha="left" if side == ">" else "right",
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
    fig.suptitle(_demo_title(suptitle, demo, SCORES_NOTE))
    save_figure(fig, png)


def plot_question_em(
    rates: Mapping[str, pd.DataFrame],
    png: str | os.PathLike,
    *,
    title: str,
    questions: Sequence[str] | None = None,
    confidence: float = 0.95,
    em: stats.EMRule | None = None,
    demo: bool = False,
) -> None:
    """Each question's share of EM answers with its CI bars, one colour per target, as Betley
    et al. 2025 (Fig. 2) and Model Organisms for EM draw them.

    `rates` maps a target's label (the base model, each fine-tuned run) to its
    `stats.question_em_rates`; the first target is drawn in dark grey, the others in colours.
    The x axis lists `questions` (default: every target's, in order of first appearance); a
    target without scored answers to a question (not asked, or all labelled) has no point there.
    """
    plt = _pyplot()
    import numpy as np

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
                [_bar(r - lo) for r, lo in zip(rate[shown], low[shown], strict=True)],
                [_bar(hi - r) for r, hi in zip(rate[shown], high[shown], strict=True)],
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
    rule = (em or stats.EMRule()).describe()
    heading = (
        f"{title}: EM rate per question ({level}% Wilson CIs)\n"
        f"EM: {rule} (CODE, REFUSAL, unscored answers left out)"
    )
    fig.suptitle(_demo_title(heading, demo, SCORES_NOTE), fontsize=11)
    save_figure(fig, png)


def _shorten(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 3] + "..."


# ---------------------------------------------------------------------------------------------
# Training curves


# (log_history key, panel title); held-out loss gets a panel only when some run logged it.
_CURVE_PANELS = (
    ("loss", "training loss"),
    ("eval_loss", "held-out loss"),
    ("learning_rate", "learning rate"),
    ("grad_norm", "gradient norm"),
)


def read_log_history(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a training run's log_history.json (the Trainer's `state.log_history`, a JSON list)."""
    path = Path(path)
    fix = "it should be the JSON list of log entries that the train rule writes; rerun the training"
    try:
        history = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EmflowError(f"{path}: no such file; {fix}.") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise EmflowError(f"{path}: not valid JSON ({err}); {fix}.") from None
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        raise EmflowError(f"{path}: not a list of log entries; {fix}.")
    return history


def _curve(history: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of one logged metric; entries without it or without a step are skipped."""
    points = [
        (float(h["step"]), float(h[key]))
        for h in history
        if isinstance(h.get(key), (int, float)) and isinstance(h.get("step"), (int, float))
    ]
    return [p[0] for p in points], [p[1] for p in points]


def read_log_histories(
    paths: Mapping[str, str | os.PathLike | Mapping[int, str | os.PathLike]],
) -> dict[str, Any]:
    """Read the log histories of several runs for `plot_training_curves`.

    `paths` maps a run's name to its log_history.json, or, for a run with replicates, to
    {training seed: log_history.json}. Missing files (a run trained elsewhere) are left out.
    """
    histories: dict[str, Any] = {}
    for name, path in paths.items():
        if isinstance(path, Mapping):
            seeds = {
                f"seed {seed}": read_log_history(p) for seed, p in path.items() if Path(p).exists()
            }
            if seeds:
                histories[name] = seeds
        elif Path(path).exists():
            histories[name] = read_log_history(path)
    return histories


def plot_training_curves(
    histories: Mapping[
        str, Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Mapping[str, Any]]]
    ],
    png: str | os.PathLike,
    *,
    title: str = "Training curves",
    demo: bool = False,
) -> None:
    """Loss, held-out loss, learning rate and gradient norm of several runs, one colour per run.

    `histories` maps a run's name to its log history (`read_log_history`), or, for a run with
    replicates, to {label such as "seed 1": log history}: its seeds share the run's colour and
    differ in line style. The x axis is the optimizer step. A metric no run logged gets no panel
    (held-out loss needs a test file).
    """
    plt = _pyplot()
    from matplotlib.lines import Line2D

    runs = {
        name: dict(value) if isinstance(value, Mapping) else {None: value}
        for name, value in histories.items()
    }
    every = [h for seeds in runs.values() for h in seeds.values()]
    panels = [
        (key, label)
        for key, label in _CURVE_PANELS
        if key != "eval_loss" or any(_curve(h, key)[0] for h in every)
    ]
    fig, axes = plt.subplots(
        1, len(panels), figsize=(4.2 * len(panels) + 2.5, 4.2), layout="constrained"
    )
    colors = plt.get_cmap("tab10").colors
    # Beyond ten runs colours repeat, so the line style changes with each round of colours;
    # the seeds of one run take the styles in turn.
    styles = ("-", "--", ":", "-.")
    handles, drawn = [], set()
    # One run's seeds alone (an experiment's own plot) are told apart by colour instead.
    alone = len(runs) == 1
    for i, (name, seeds) in enumerate(runs.items()):
        for j, (seed_label, history) in enumerate(seeds.items()):
            color = colors[(j if alone else i) % len(colors)]
            style = "-" if alone else styles[(i // len(colors) + j) % len(styles)]
            for ax, (key, _) in zip(axes, panels, strict=True):
                steps, values = _curve(history, key)
                if not steps:
                    continue
                # Held-out loss is logged a few times per run: markers show where it was measured.
                marker = "o" if key == "eval_loss" or len(steps) == 1 else None
                ax.plot(steps, values, color=color, ls=style, lw=1.4, marker=marker, ms=4)
                drawn.add(key)
            if seed_label is None:
                label = name
            else:
                label = seed_label if alone else f"{name}, {seed_label}"
            handles.append(Line2D([], [], color=color, ls=style, lw=2, label=label))
    for ax, (key, label) in zip(axes, panels, strict=True):
        ax.set_title(label)
        ax.set_xlabel("optimizer step")
        ax.grid(True, alpha=0.3)
        if key == "learning_rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        if key not in drawn:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
    if handles:
        fig.legend(handles=handles, loc="outside right upper", frameon=False, fontsize=9)
    fig.suptitle(_demo_title(title, demo, CURVES_NOTE))
    save_figure(fig, png)


def plot_experiment_curves(
    experiment: str,
    log_histories: Sequence[str | os.PathLike],
    png: str | os.PathLike,
    *,
    seeds: Sequence[int] | None = None,
    demo: bool = False,
) -> None:
    """The `training_curves` rule: one experiment's curves from its runs' log histories.

    A single run (`seeds` None) has one log history; an experiment with replicates has one per
    training seed, in the order of `seeds`, drawn in one plot.
    """
    if seeds is None:
        (path,) = log_histories
        histories: dict[str, Any] = {experiment: read_log_history(path)}
        title = f"{experiment}: training curves"
    else:
        histories = {
            experiment: {
                f"seed {seed}": read_log_history(path)
                for seed, path in zip(seeds, log_histories, strict=True)
            }
        }
        title = f"{experiment}: training curves of each seed"
    plot_training_curves(histories, png, title=title, demo=demo)


SWEEP_NOTE = "DEMO: tiny random model and random judge - these curves mean nothing"


def plot_sweep(
    table: pd.DataFrame,
    png: str | os.PathLike,
    *,
    title: str,
    base: Mapping[str, tuple[float, float, float]],
    first_em_step: int | None = None,
    demo: bool = False,
) -> None:
    """A checkpoint sweep (emflow.sweeps.sweep_table): aligned and coherent, the EM rate, and
    the training loss and LoRA norm against the optimizer step. One line per seed (thin) and
    their mean (thick) for replicates; CI bands for a single run; the base model's value and CI
    as a grey band; a dotted line at the first step whose EM rate is outside its noise.

    `base` maps "aligned", "coherent" and "em_rate" to the base model's (value, low, high).
    """
    plt = _pyplot()
    fig, axes = plt.subplots(3, 1, figsize=(8.0, 9.0), sharex=True, layout="constrained")
    seeds = sorted(table["seed"].unique())
    panels = [
        (axes[0], ("aligned", "tab:blue"), ("coherent", "tab:green")),
        (axes[1], ("em_rate", "tab:red")),
    ]
    for ax, *metrics in panels:
        for name, colour in metrics:
            value, low, high = base[name]
            ax.axhspan(low, high, color="0.85", zorder=0)
            ax.axhline(value, color="0.5", lw=1, ls="--", zorder=1,
                       label=f"base model {name} (CI band)")  # fmt: skip
            for seed in seeds:
                rows = table[table["seed"] == seed]
                ax.plot(rows["step"], rows[name], color=colour, marker="o", markersize=3,
                        lw=0.8 if len(seeds) > 1 else 1.6,
                        label=name if len(seeds) == 1 else None)  # fmt: skip
                if len(seeds) == 1:
                    ax.fill_between(rows["step"], rows[f"{name}_ci_low"],
                                    rows[f"{name}_ci_high"], color=colour, alpha=0.15)  # fmt: skip
            if len(seeds) > 1:
                mean = table.groupby("step")[name].mean()
                ax.plot(mean.index, mean.values, color=colour, lw=2.2,
                        label=f"{name} (mean of {len(seeds)} seeds)")  # fmt: skip
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    axes[0].set_ylabel("score (0-100)")
    axes[1].set_ylabel("share of EM answers")
    loss_ax, norm_ax = axes[2], axes[2].twinx()
    for seed in seeds:
        rows = table[table["seed"] == seed]
        loss_ax.plot(rows["step"], rows["train_loss"], color="tab:purple", marker="o",
                     markersize=3, lw=1.0)  # fmt: skip
        norm_ax.plot(rows["step"], rows["lora_norm"], color="tab:orange", marker="s",
                     markersize=3, lw=1.0)  # fmt: skip
    loss_ax.set_ylabel("training loss", color="tab:purple")
    norm_ax.set_ylabel("LoRA norm ||scaling B A||", color="tab:orange")
    loss_ax.set_xlabel("optimizer step")
    loss_ax.grid(True, alpha=0.3)
    if first_em_step is not None:
        for ax in axes:
            ax.axvline(first_em_step, color="k", ls=":", lw=1.2)
        axes[1].annotate(f"EM outside base noise from step {first_em_step}",
                         (first_em_step, 1.0), xycoords=("data", "axes fraction"),
                         xytext=(4, -12), textcoords="offset points", fontsize=8)  # fmt: skip
    fig.suptitle(_demo_title(f"{title}: checkpoint sweep", demo, SWEEP_NOTE))
    save_figure(fig, png)


def plot_sweeps(
    tables: Mapping[str, pd.DataFrame], png: str | os.PathLike, *, demo: bool = False
) -> None:
    """Every experiment's EM rate against the optimizer step (the mean over its seeds)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8.0, 4.5), layout="constrained")
    for name, table in tables.items():
        mean = table.groupby("step")["em_rate"].mean()
        ax.plot(mean.index, mean.values, marker="o", markersize=3, label=name)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("share of EM answers")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(_demo_title("EM rate over training, every sweep", demo, SWEEP_NOTE))
    save_figure(fig, png)
