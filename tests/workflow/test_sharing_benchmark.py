"""benchmarks/workflow_sharing.py on the CPU: its baseline copy of the rules and its timeline."""

from __future__ import annotations

import sys

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import workflow_sharing  # noqa: E402

LOG = """Select jobs to execute...
[Sun Dec  6 11:10:44 2026]
localrule train:
    output: a
    jobid: 3
    wildcards: run=gpu/mixed
[Sun Dec  6 11:10:50 2026]
rule generate:
    jobid: 4
[Sun Dec  6 11:11:44 2026]
Finished jobid: 3 (Rule: train)
[Sun Dec  6 11:11:50 2026]
Finished jobid: 4 (Rule: generate)
"""


def test_timeline_reads_each_jobs_start_and_end(tmp_path):
    (tmp_path / "run.log").write_text(LOG)
    assert workflow_sharing.timeline(tmp_path / "run.log") == [
        {"rule": "train", "start": 0.0, "end": 60.0, "wildcards": "run=gpu/mixed"},
        {"rule": "generate", "start": 6.0, "end": 66.0, "wildcards": ""},
    ]


def test_the_baseline_runs_rules_without_priorities(tmp_path):
    workflow_sharing.workflow_copy(tmp_path / "with", priorities=True)
    workflow_sharing.workflow_copy(tmp_path / "without", priorities=False)
    assert "priority:" in (tmp_path / "with/rules/generate.smk").read_text()
    for rules in (tmp_path / "without/rules").glob("*.smk"):
        assert "priority:" not in rules.read_text()
        assert rules.read_text().count("rule ") == (
            tmp_path / "with/rules" / rules.name
        ).read_text().count("rule ")
