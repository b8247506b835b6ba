"""The code reads one way: ruff's formatter and lint rules (pyproject.toml), snakefmt for rules."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO

PYTHON = ["emflow", "scripts", "tests", "benchmarks"]


def run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True)


def test_ruff_format_is_clean():
    result = run(sys.executable, "-m", "ruff", "format", "--check", *PYTHON)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_lint_is_clean():
    result = run(sys.executable, "-m", "ruff", "check", *PYTHON)
    assert result.returncode == 0, result.stdout + result.stderr


def test_snakefmt_is_clean():
    result = run(sys.executable, "-m", "snakefmt", "--check", "Snakefile", "rules")
    assert result.returncode == 0, result.stdout + result.stderr
