"""A family's reference (`compare_to`): the summary's differences within a group are each member
against the experiment it names, with p-values adjusted over the summary's tests."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest
from judged_files import write_judged
from plans import plan_of

from emflow.errors import EmflowError
from emflow.report import families, summary
from emflow.report.analysis import Analysis, SummaryRun, summary_rows
from emflow.report.stats import Estimate
from emflow.report.tables import fmt_difference, fmt_estimate, fmt_p, fmt_value
from emflow.workflow.plan import Plan

QUESTIONS = [f"q{i}?" for i in range(8)]


def family_runs(tmp_path: Path, compare: bool) -> list[SummaryRun]:
    base = str(write_judged(tmp_path / "base.csv", [90, 85] * 4, [90, 80] * 4, QUESTIONS))
    scores = {
        "inoc/general": [80, 85] * 4,
        "inoc/mixed_baseline": [10, 25] * 4,
        "inoc/paraphrased": [60, 75] * 4,
    }
    return [
        SummaryRun(
            name,
            str(write_judged(tmp_path / f"{i}.csv", aligned, [90, 80] * 4, QUESTIONS)),
            base,
            compare_to="inoc/mixed_baseline" if compare and "baseline" not in name else None,
        )
        for i, (name, aligned) in enumerate(scores.items())
    ]


def test_members_are_compared_with_the_reference_only(tmp_path):
    analysis = Analysis(n_resamples=200)
    _, every_pair = summary_rows(family_runs(tmp_path, compare=False), analysis)
    assert len(every_pair) == 3  # without compare_to: every pair of the group, as before

    rows, pairs = summary_rows(family_runs(tmp_path, compare=True), analysis)
    assert [(p.a.name, p.b.name) for p in pairs] == [
        ("inoc/mixed_baseline", "inoc/general"),
        ("inoc/mixed_baseline", "inoc/paraphrased"),
    ]
    # Each member's EM rate is lower than the reference's: the difference is B - reference.
    assert all(p.comparisons["em_rate"].difference < 0 for p in pairs)
    text = summary.summary_markdown(rows, pairs, analysis)
    # Each difference with its raw and adjusted p: "-100.0 pp p 0.010 (0.021)*".
    for member in ("general", "paraphrased"):
        assert re.search(rf"\| {member} - mixed_baseline +\| .* pp p [\d.]+ \([\d.]+\)", text)
    assert "Benjamini-Hochberg over the summary's tests" in text
    # Each row's EM rate with its CI (summary.csv).
    header, *lines = summary.summary_csv(rows, analysis=analysis).splitlines()
    assert {"em_rate", "em_rate_ci_low", "em_rate_ci_high"} <= set(header.split(","))
    for p in pairs:
        assert p.comparisons["em_rate"].p_adjusted is not None


def section_table(text: str, heading: str) -> list[list[str]]:
    """The cells of the table under `heading` in summary.md, its header row first."""
    after = text.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in after.splitlines() if line.startswith("|")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[:1] + lines[2:]]


def test_a_family_is_one_table_of_the_summary_numbers(tmp_path):
    analysis = Analysis(n_resamples=200)
    base = str(write_judged(tmp_path / "base.csv", [90, 85] * 4, [90, 80] * 4, QUESTIONS))
    other = [  # a group without compare_to keeps its block of every pair
        SummaryRun(f"other/{n}", str(write_judged(tmp_path / f"{n}.csv", a, [90, 80] * 4)), base)
        for n, a in (("x", [20, 90] * 4), ("y", [90, 85] * 4))
    ]
    runs = family_runs(tmp_path, compare=True) + other
    references = families.group_references(runs)
    assert references == {"inoc": "inoc/mixed_baseline"}
    rows, pairs = summary_rows(runs, analysis)
    text = summary.summary_markdown(rows, pairs, analysis, references=references)
    every_block = summary.summary_markdown(rows, pairs, analysis)

    table = section_table(text, "## inoc: vs mixed_baseline")
    assert table[0][:5] == [
        "experiment",
        "EM rate [95% CI]",
        "EM rate difference [95% CI]",
        "p",
        "p adjusted",
    ]
    assert [r[0] for r in table[1:]] == ["mixed_baseline (reference)", "general", "paraphrased"]
    # EM rate [CI]: summary.csv's estimate and CI, in the module's format.
    by_name = {r["experiment"]: r for r in csv.DictReader(io.StringIO(summary.summary_csv(rows)))}
    for cells, name in zip(table[1:], ("mixed_baseline", "general", "paraphrased"), strict=True):
        line = by_name[f"inoc/{name}"]
        em = Estimate(*(float(line[f"em_rate{k}"]) for k in ("", "_ci_low", "_ci_high")))
        assert cells[1] == fmt_estimate(em, "share")
    assert table[1][2:5] == ["-", "-", "-"]
    # Each member: its comparison with the reference, with the comparison's own CI; p adjusted
    # as the differences table shows it for the same pair.
    shown = {m.name: m for m in analysis.metrics.shown}
    family = [p for p in pairs if p.group == "inoc"]
    for cells, pair in zip(table[2:], family, strict=True):
        c = pair.comparisons["em_rate"]
        assert cells[2] == fmt_difference(c, "share") and "[" in cells[2]
        assert cells[3] == fmt_p(c.p_value)
        assert cells[4] == fmt_p(c.p_adjusted) + ("*" if c.significant else "")
        member = pair.b.name.removeprefix("inoc/")
        old = re.search(rf"\| {member} - mixed_baseline .*\((\S+)\)\*? *\|\n", every_block)
        assert cells[4].rstrip("*") == old.group(1)
        for i, m in enumerate(("aligned", "coherent"), start=5):
            d = pair.comparisons[m]
            mean = fmt_value(pair.b.metrics[m].value, shown[m].kind)
            assert cells[i].rstrip("*") == f"{mean} ({fmt_difference(d, 'score', ci=False)})"
    # The other group's block is as before; the family's pairs are in its table only.
    assert "## Differences within groups" in text and "| general - mixed_baseline" not in text
    other_block = every_block.split("other:\n", 1)[1].split("\n\n", 2)[:2]
    assert "other:\n" + "\n\n".join(other_block) in text
    assert text.index("## Differences within groups") < text.index("## inoc: vs")


def test_the_summary_files_show_the_family_table(tmp_path):
    runs = family_runs(tmp_path, compare=True)
    md = tmp_path / "summary.md"
    report = {"bootstrap_resamples": 200, "demo": False}
    summary.write_summary(
        runs,
        report,
        reported={},
        markdown=md,
        csv_path=tmp_path / "summary.csv",
        plot=tmp_path / "summary.png",
        curves=tmp_path / "curves.png",
    )
    text = md.read_text()
    assert "## inoc: vs mixed_baseline" in text and "## Differences within groups" not in text


def plan_inoculation() -> Plan:
    return plan_of("config/config.yaml", overlay={"experiments": ["inoculation/*"]}, replace=False)


def test_the_inoculation_family_plans_with_its_reference(workdir):
    plan = plan_inoculation()
    assert "inoculation/general" in plan.runs and "inoculation/user_prefix" in plan.runs
    references = {r.name: r.compare_to for r in plan.summary_runs}
    assert references["inoculation/mixed_baseline"] is None
    assert {v for k, v in references.items() if k != "inoculation/mixed_baseline"} == {
        "inoculation/mixed_baseline"
    }
    params = plan.train_params("inoculation/paraphrased")
    assert len(json.dumps(params)) and "inoculation" in json.dumps(params)
    assert "compare_to" not in json.dumps(plan.train_params("inoculation/general"))


def test_summary_params_without_compare_to_are_unchanged(workdir):
    plan = plan_of("config/config.yaml", replace=False)
    assert all("compare_to" not in run for run in plan.summary_run_params())


def test_a_reference_outside_the_group_is_one_sentence(workdir):
    path = Path("experiments/inoculation/general/config.json")
    path.write_text(json.dumps(json.loads(path.read_text()) | {"compare_to": "nosuch"}))
    with pytest.raises(EmflowError, match="general/config.json: compare_to is 'nosuch', which is"):
        plan_inoculation()
