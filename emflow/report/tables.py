"""Markdown tables and number formats shared by results.md, the summary and its CSV."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from emflow.report import stats
from emflow.report.metrics import Metric

if TYPE_CHECKING:
    import pandas as pd

DEMO_NOTICE = (
    "**Demo run: these scores mean nothing.** They come from a tiny random model answering and "
    "a random judge scoring; the demo only shows that every stage of the workflow runs."
)


def fmt_value(value: float | None, kind: str) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value:.2f}" if kind == "score" else f"{100 * value:.1f}%"


def fmt_estimate(estimate: stats.Estimate, kind: str) -> str:
    """A value with its CI, e.g. `56.50 [48.1, 64.9]` or `12.5% [5.0, 20.0]`."""
    if math.isnan(estimate.ci_low):
        return fmt_value(estimate.value, kind)
    if kind == "score":
        return f"{estimate.value:.2f} [{estimate.ci_low:.1f}, {estimate.ci_high:.1f}]"
    return (
        f"{100 * estimate.value:.1f}% [{100 * estimate.ci_low:.1f}, {100 * estimate.ci_high:.1f}]"
    )


def fmt_question_em(rates: pd.DataFrame, question: str) -> str:
    """A question's EM rate with its CI from `question_em_rates`; "-" where not asked."""
    if question not in rates.index:
        return "-"
    row = rates.loc[question]
    return fmt_estimate(
        stats.Estimate(row["em_rate"], row["em_ci_low"], row["em_ci_high"]), "share"
    )


def fmt_question_mean(rates: pd.DataFrame, question: str, metric: Metric) -> str:
    """A question's mean `metric` with its CI from `question_em_rates`; "-" where not asked."""
    if question not in rates.index:
        return "-"
    row, name = rates.loc[question], metric.name
    estimate = stats.Estimate(row[name], row[f"{name}_ci_low"], row[f"{name}_ci_high"])
    return fmt_estimate(estimate, metric.kind)


def fmt_p(p: float) -> str:
    if math.isnan(p):
        return "n/a"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def fmt_difference(c: stats.Comparison, kind: str, ci: bool = True) -> str:
    """A difference B - A, with its CI when it has one (`ci`), in points or percentage points."""
    if math.isnan(c.difference):
        return "n/a"
    if kind == "score":
        text = f"{c.difference:+.2f}"
        interval = f" [{c.ci_low:+.1f}, {c.ci_high:+.1f}]"
    else:
        text = f"{100 * c.difference:+.1f} pp"
        interval = f" [{100 * c.ci_low:+.1f}, {100 * c.ci_high:+.1f}]"
    return text + interval if ci and not math.isnan(c.ci_low) else text


def csv_number(value: float) -> str:
    """A number for the summary CSV: empty where undefined, six significant digits."""
    return "" if math.isnan(value) else f"{value:.6g}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A pipe table padded so that it reads as well in a terminal as rendered."""
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows, strict=True)]

    # The first column is text (left-aligned); the numbers are right-aligned so digits line up.
    def line(cells: Sequence[str]) -> str:
        padded = [
            str(c).ljust(w) if i == 0 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = "|".join(
        ("-" * (w + 2)) if i == 0 else ("-" * (w + 1) + ":") for i, w in enumerate(widths)
    )
    return "\n".join([line(headers), f"|{rule}|", *(line(r) for r in rows)])


def _flatten(mapping: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            items.extend(_flatten(value, f"{name}."))
        else:
            items.append((name, value))
    return items


def _fmt_usage_value(key: str, value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and any(
        w in key.lower() for w in ("dollar", "cost", "usd", "price")
    ):
        return f"${value:.4f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


@dataclass(frozen=True)
class PanelUsage:
    """A judge panel's usage for usage_markdown: {judge: {target: usage dict}}, the primary
    judge first (its table is the one a one-judge results.md shows)."""

    judges: Mapping[str, Mapping[str, Mapping[str, Any]]]


# The cost-per-judge table's columns: (header, JudgeUsage keys summed over the judge's targets).
_COST_COLUMNS = (
    ("calls", ("calls",)),
    ("sent", ("calls_sent",)),
    ("from cache", ("calls_cached",)),
    ("failed", ("calls_failed",)),
    ("tokens", ("prompt_tokens", "completion_tokens")),
)


def _summed_dollars(usages: Sequence[Mapping[str, Any]], key: str) -> str:
    values = [u.get(key) for u in usages]
    if any(v is None for v in values):
        return "no price"  # the judge's model has no list price (judge.prices)
    return f"${sum(values):.4f}"


def judge_costs_markdown(judges: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    """What each judge of a panel cost, summed over its targets (base model and each run)."""
    rows = []
    for name, targets in judges.items():
        usages = list(targets.values())
        counts = [
            f"{sum(int(u.get(k) or 0) for u in usages for k in keys):,}"
            for _, keys in _COST_COLUMNS
        ]
        rows.append(
            (
                name,
                *counts,
                _summed_dollars(usages, "dollars"),
                _summed_dollars(usages, "cached_dollars"),
            )
        )
    headers = ["judge", *(h for h, _ in _COST_COLUMNS), "dollars", "cached calls' dollars"]
    return (
        markdown_table(headers, rows)
        + "\n\nCost per judge, summed over its targets. sent, tokens and dollars: the calls this "
        "workflow sent; from cache: answered from the judge cache (what those cost when they "
        "were made: cached calls' dollars). Dollars are list-price estimates; 'no price' where "
        "the judge's model has none."
    )


def usage_markdown(usage: Mapping[str, Any] | PanelUsage | None) -> str:
    """The judge's usage (calls, cache hits, tokens, dollars: whatever keys it recorded).

    `usage` is one flat dict (e.g. `JudgeUsage.to_dict()`), or a dict of such dicts (e.g.
    {"base model": ..., "fine-tuned": ...}), shown side by side; a PanelUsage shows each judge's
    cost first, then the primary judge's table.
    """
    if isinstance(usage, PanelUsage):
        primary = next(iter(usage.judges.values()))
        return (
            judge_costs_markdown(usage.judges)
            + "\n\nThe primary judge's usage per target (its scores are the headline numbers):\n\n"
            + usage_markdown(primary)
        )
    if hasattr(usage, "to_dict"):
        usage = usage.to_dict()
    if not usage:
        return "Judge usage was not recorded."
    if all(isinstance(v, Mapping) for v in usage.values()):
        runs = {name: dict(_flatten(v)) for name, v in usage.items()}
        keys = list(dict.fromkeys(k for flat in runs.values() for k in flat))
        rows = [
            (key, *(_fmt_usage_value(key, f[key]) if key in f else "-" for f in runs.values()))
            for key in keys
        ]
        return markdown_table(["judge usage", *runs], rows)
    rows = [(key, _fmt_usage_value(key, value)) for key, value in _flatten(usage)]
    return markdown_table(["judge usage", "value"], rows)
