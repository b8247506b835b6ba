"""The figures over training: training curves (loss, held-out loss, learning rate, gradient
norm) of one or several runs, and checkpoint sweeps (scores, EM rate, loss and LoRA norm
against the optimizer step).

Each takes numbers already read (log histories, sweep tables), never a path to read.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from emflow.report.figures import demo_title, pyplot, save_figure
from emflow.report.metrics import DEFAULT_METRICS, MetricSet

CURVES_NOTE = "DEMO: tiny random model on synthetic rows - these curves mean nothing"

# (log_history key, panel title); held-out loss and the KL-regularised runs' two loss terms
# (emflow.train.kl: the last micro-batch's of each logged step) get a panel only when some run
# logged them.
_CURVE_PANELS = (
    ("loss", "training loss"),
    ("eval_loss", "held-out loss"),
    ("sft_loss", "SFT term (KL runs)"),
    ("kl_loss", "KL to the base model"),
    ("learning_rate", "learning rate"),
    ("grad_norm", "gradient norm"),
)
_LOGGED_BY_SOME = frozenset({"eval_loss", "sft_loss", "kl_loss"})


def _curve(history: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of one logged metric; entries without it or without a step are skipped."""
    points = [
        (float(h["step"]), float(h[key]))
        for h in history
        if isinstance(h.get(key), (int, float)) and isinstance(h.get("step"), (int, float))
    ]
    return [p[0] for p in points], [p[1] for p in points]


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
    plt = pyplot()
    from matplotlib.lines import Line2D

    runs = {
        name: dict(value) if isinstance(value, Mapping) else {None: value}
        for name, value in histories.items()
    }
    every = [h for seeds in runs.values() for h in seeds.values()]
    panels = [
        (key, label)
        for key, label in _CURVE_PANELS
        if key not in _LOGGED_BY_SOME or any(_curve(h, key)[0] for h in every)
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
    fig.suptitle(demo_title(title, demo, CURVES_NOTE))
    save_figure(fig, png)


SWEEP_NOTE = "DEMO: tiny random model and random judge - these curves mean nothing"
# The scores beyond aligned (blue) and coherent (green); red, purple and orange are taken.
_MORE_COLOURS = ("tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray")
SCORE_COLOURS = ("tab:blue", "tab:green", *_MORE_COLOURS)


def draw_scores_against(
    axes,
    table: pd.DataFrame,
    x: str,
    base: Mapping[str, tuple[float, float, float]],
    metrics: MetricSet,
    *,
    markersize: float,
) -> None:
    """The judged scores (axes[0]) and the EM rate (axes[1]) of `table` against its column `x`
    (a sweep's step, a dose's LoRA scale): a line per seed, with CI bands for a single run and
    the seeds' mean for replicates, over the base model's value and CI as a grey band.

    `base` maps each judged score and "em_rate" to the base model's (value, low, high)."""
    seeds = sorted(table["seed"].unique())
    panels = [
        (axes[0], list(zip((m.name for m in metrics.scores), SCORE_COLOURS, strict=False))),
        (axes[1], [("em_rate", "tab:red")]),
    ]
    for ax, lines in panels:
        for name, colour in lines:
            value, low, high = base[name]
            ax.axhspan(low, high, color="0.85", zorder=0)
            ax.axhline(value, color="0.5", lw=1, ls="--", zorder=1,
                       label=f"base model {name} (CI band)")  # fmt: skip
            for seed in seeds:
                rows = table[table["seed"] == seed]
                ax.plot(rows[x], rows[name], color=colour, marker="o", markersize=markersize,
                        lw=0.8 if len(seeds) > 1 else 1.6,
                        label=name if len(seeds) == 1 else None)  # fmt: skip
                if len(seeds) == 1:
                    ax.fill_between(rows[x], rows[f"{name}_ci_low"],
                                    rows[f"{name}_ci_high"], color=colour, alpha=0.15)  # fmt: skip
            if len(seeds) > 1:
                mean = table.groupby(x)[name].mean()
                ax.plot(mean.index, mean.values, color=colour, lw=2.2,
                        label=f"{name} (mean of {len(seeds)} seeds)")  # fmt: skip
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="best")


def plot_sweep(
    table: pd.DataFrame,
    png: str | os.PathLike,
    *,
    title: str,
    base: Mapping[str, tuple[float, float, float]],
    first_em_step: int | None = None,
    demo: bool = False,
    metrics: MetricSet = DEFAULT_METRICS,
) -> None:
    """A checkpoint sweep (emflow.report.training.sweep_table): the judged scores, the EM rate,
    and the training loss and LoRA norm against the optimizer step. One line per seed (thin) and
    their mean (thick) for replicates; CI bands for a single run; the base model's value and CI
    as a grey band; a dotted line at the first step whose EM rate is outside its noise.

    `base` maps each judged score and "em_rate" to the base model's (value, low, high).
    """
    plt = pyplot()
    fig, axes = plt.subplots(3, 1, figsize=(8.0, 9.0), sharex=True, layout="constrained")
    seeds = sorted(table["seed"].unique())
    draw_scores_against(axes[:2], table, "step", base, metrics, markersize=3)
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
    fig.suptitle(demo_title(f"{title}: checkpoint sweep", demo, SWEEP_NOTE))
    save_figure(fig, png)


def plot_sweeps(
    tables: Mapping[str, pd.DataFrame], png: str | os.PathLike, *, demo: bool = False
) -> None:
    """Every experiment's EM rate against the optimizer step (the mean over its seeds)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8.0, 4.5), layout="constrained")
    for name, table in tables.items():
        mean = table.groupby("step")["em_rate"].mean()
        ax.plot(mean.index, mean.values, marker="o", markersize=3, label=name)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("share of EM answers")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(demo_title("EM rate over training, every sweep", demo, SWEEP_NOTE))
    save_figure(fig, png)
