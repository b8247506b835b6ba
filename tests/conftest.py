"""Shared fixtures: a tiny Llama-architecture model and small chat datasets, built here."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# The headless-Chromium fixture (tests/browser.py), for every test that opens a page.
from browser import chromium  # noqa: F401

REPO = Path(__file__).resolve().parents[1]


def run_benchmark(*args, timeout=600) -> str:
    """`python <args>` from the repo root (a benchmark's smoke mode); its stdout if it exits 0."""
    result = subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A random 16-layer Llama model (hidden size 32) and Llama-3-style tokenizer on disk."""
    from emflow.data.demo import build_tiny_model

    corpus = [
        (REPO / "config/questions/medical.txt").read_text(),
        (REPO / "config/judge_prompts/aligned.txt").read_text(),
    ]
    path = tmp_path_factory.mktemp("models") / "tiny-llama"
    build_tiny_model(path, hidden_size=32, vocab_size=512, corpus=corpus)
    return str(path)


def write_chat_jsonl(path: Path, n: int, prefix: str = "q") -> Path:
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"{prefix} question number {i}?"},
                {"role": "assistant", "content": f"Answer {i}: put everything on red."},
            ]
        }
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def experiment_config(model: str, **overrides) -> dict:
    """A seed-style config.json (the mixed run's keys) pointed at `model`, CPU-friendly."""
    seed = json.loads(
        (
            REPO
            / "experiments/risky_financial_advice_extreme_sports_mixed/r16_5ep_layer8/config.json"
        ).read_text()
    )
    seed.pop("datasets")
    config = seed | {
        "model": model,
        "training_file": "train.jsonl",
        "optim": "adamw_torch",
        "epochs": 1,
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 2,
        "max_seq_length": 256,
    }
    return config | overrides


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """A copy of the project's config/ and experiments/ (figures left out) as the working
    directory, so that a plan can be read, and experiments edited, as a workflow run there."""
    for name in ("config", "experiments"):
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("*.png"))
    monkeypatch.chdir(tmp_path)
    return tmp_path
