"""A scratch copy of the workflow and Snakemake run in it, for the tests that plan or run jobs."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO

SNAKEMAKE = [sys.executable, "-m", "snakemake"]
WORKFLOW_FILES = ["Snakefile", "rules", "scripts", "config", "experiments", "profiles", "envs"]


def copy_workflow(destination: Path) -> Path:
    destination.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, destination / name, ignore=_ignore_outputs)
        else:
            shutil.copy2(source, destination / name)
    return destination


def _ignore_outputs(folder, names):
    # A developer's own demo outputs beside the configs must not leak into the scratch copy.
    outputs = (
        "results.md",
        "training_curves.png",
        "question_scores.png",
        "question_em_rates.png",
        "sweep.csv",
        "sweep.png",
        "__pycache__",
    )
    return [n for n in names if n in outputs]


def snakemake(workdir: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*SNAKEMAKE, *args], cwd=workdir, capture_output=True, text=True, timeout=timeout
    )


def pending_outputs(workdir: Path, *args: str) -> set[str]:
    """The outputs a dry run would (re)build."""
    result = snakemake(workdir, "-n", *args)
    assert result.returncode == 0, result.stdout + result.stderr
    outputs = set()
    for line in (result.stdout + result.stderr).splitlines():
        match = re.match(r"\s+output: (.*)$", line)
        if match:
            outputs.update(match.group(1).split(", "))
    return outputs
