"""A family's table in the summary: for a group whose experiments name a reference
(`compare_to`), one row per experiment, the reference first, with its EM rate and CI and each
member's difference from the reference, raw and adjusted p, and its mean scores.

The numbers are the summary's own: each row's estimates as summary.csv has them, each member's
comparison the `Pair` the summary's tests were adjusted with (emflow.report.analysis).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from emflow.report import stats
from emflow.report.analysis import Analysis, Pair, SummaryRow, SummaryRun
from emflow.report.metrics import EM_RATE
from emflow.report.tables import fmt_difference, fmt_estimate, fmt_p, fmt_value, markdown_table


def group_references(runs: Sequence[SummaryRun]) -> dict[str, str]:
    """{group: the full name of the experiment its members compare with}, for the groups where
    some run names one (`SummaryRun.compare_to`)."""
    return {run.group: run.compare_to for run in runs if run.compare_to}


def family_headers(analysis: Analysis) -> list[str]:
    level = analysis.level
    return [
        "experiment",
        f"{EM_RATE.header} [{level}% CI]",
        f"{EM_RATE.header} difference [{level}% CI]",
        "p",
        "p adjusted",
        # A member's mean with its difference from the reference, where it fits on the line.
        *(f"{m.header} (difference)" for m in analysis.metrics.scores),
    ]


def family_rows(
    reference: SummaryRow, pairs: Sequence[Pair], analysis: Analysis, group: str
) -> list[tuple[str, ...]]:
    """The reference's row, then each member's (`pairs`: reference - member, in table order)."""
    prefix = group + "/"
    scores = analysis.metrics.scores
    rows = [
        (
            f"{reference.name.removeprefix(prefix)} (reference)",
            fmt_estimate(reference.metrics[EM_RATE.name], EM_RATE.kind),
            "-",
            "-",
            "-",
            *(fmt_value(reference.metrics[m.name].value, m.kind) for m in scores),
        )
    ]
    for pair in pairs:
        c = pair.comparisons[EM_RATE.name]
        means = []
        for m in scores:
            d = pair.comparisons[m.name]
            mark = "*" if d.significant else " "
            value = fmt_value(pair.b.metrics[m.name].value, m.kind)
            means.append(f"{value} ({fmt_difference(d, m.kind, ci=False)}){mark}")
        rows.append(
            (
                pair.b.name.removeprefix(prefix),
                fmt_estimate(pair.b.metrics[EM_RATE.name], EM_RATE.kind),
                # The comparison's own CI (bootstrap, or Welch's t for seeds); none if undefined.
                fmt_difference(c, EM_RATE.kind),
                fmt_p(c.p_value),
                "-"
                if c.p_adjusted is None
                else fmt_p(c.p_adjusted) + ("*" if c.significant else " "),
                *means,
            )
        )
    return rows


def family_lines(
    group: str,
    reference: SummaryRow,
    pairs: Sequence[Pair],
    analysis: Analysis,
    *,
    n_tests: int,
    tests_named: str,
) -> list[str]:
    """The group's section of summary.md: its heading, table and legend."""
    name = reference.name.removeprefix(group + "/")
    return [
        f"## {group}: vs {name}",
        "",
        markdown_table(family_headers(analysis), family_rows(reference, pairs, analysis, group)),
        "",
        f"EM rate with its {analysis.level}% CI as in summary.csv; difference: member - "
        f"{name} in percentage points with its {analysis.level}% CI; p raw and adjusted "
        f"(Benjamini-Hochberg over the summary's {n_tests} tests; {tests_named}); means with "
        f"their difference from {name}; * adjusted p < {analysis.alpha:g}.",
    ]


def family_sections(
    rows: Sequence[SummaryRow],
    pairs: Sequence[Pair],
    references: Mapping[str, str],
    analysis: Analysis,
    *,
    n_tests: int,
    tests_named: Callable[[Sequence[stats.Comparison]], str],
) -> list[str]:
    """Every referenced group's section, in the order its pairs come (groups without pairs:
    the reference not judged yet, say, have none)."""
    by_name = {row.name: row for row in rows}
    lines: list[str] = []
    for group in dict.fromkeys(p.group for p in pairs if p.group in references):
        members = [p for p in pairs if p.group == group]
        reference = by_name[references[group]]
        named = tests_named([c for p in members for c in p.comparisons.values()])
        lines += [
            "",
            *family_lines(group, reference, members, analysis, n_tests=n_tests, tests_named=named),
        ]
    return lines
