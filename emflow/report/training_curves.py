"""The `training_curves` rule: one experiment's training curves, beside its config."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from emflow.report.curves import plot_training_curves
from emflow.report.training import read_log_history


def write_training_curves(
    experiment: str,
    log_histories: Sequence[str | os.PathLike],
    png: str | os.PathLike,
    *,
    seeds: Sequence[int] | None = None,
    demo: bool = False,
) -> None:
    """One experiment's curves from its runs' log histories.

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
