"""Checkpoint sweeps' documents: an experiment's sweep table (CSV) and figure (the `sweep`
rule), and every sweep's EM rate overlaid (the `summary_sweeps` rule). The numbers are
`emflow.report.training`'s; results.md's sweep section is written by `emflow.report.results`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from emflow.atomic import write_text_atomic
from emflow.report.analysis import Analysis
from emflow.report.curves import plot_sweep, plot_sweeps
from emflow.report.training import SweepPoint, base_values, first_em_step, sweep_table


def write_sweep(
    experiment: str,
    points: Sequence[Mapping[str, Any]],
    *,
    base_judged: str,
    report: Mapping[str, Any],
    table_csv: str,
    plot_png: str,
) -> pd.DataFrame:
    """The `sweep` rule: an experiment's sweep table (CSV) and figure."""
    analysis = Analysis.from_report_config(report)
    table = sweep_table([SweepPoint(**p) for p in points], analysis)
    base = base_values(base_judged, analysis)
    write_text_atomic(table_csv, table.to_csv(index=False))
    plot_sweep(
        table,
        plot_png,
        title=experiment,
        base=base,
        first_em_step=first_em_step(table, base["em_rate"][2]),
        demo=report["demo"],
        metrics=analysis.metrics,
    )
    return table


def write_summary_sweeps(tables: Mapping[str, str], png: str, *, demo: bool = False) -> None:
    """The `summary_sweeps` rule: every experiment's sweep EM rate, overlaid."""
    plot_sweeps({name: pd.read_csv(path) for name, path in tables.items()}, png, demo=demo)
