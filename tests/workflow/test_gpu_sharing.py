"""Several jobs per GPU (EMFLOW_JOBS_PER_GPU): K slots per card, cards filled side by side.

No GPU is needed: EMFLOW_GPUS names fake GPUs, nvidia-smi is one that fails (as without a
driver), and the jobs only record what they were given.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO
from test_gpus import run_recorded_jobs

from emflow.errors import EmflowError
from emflow.workflow.gpus import gpu_slot, jobs_per_gpu

HOLD = """
import sys, time
from emflow.workflow.gpus import gpu_slot
with gpu_slot(sys.argv[1].split(","), sys.argv[2], poll_seconds=0.05) as gpu:
    print(gpu, flush=True)
    time.sleep(float(sys.argv[3]))
"""


def _env(tmp_path: Path, per_gpu: str | None) -> dict:
    """Our environment with no GPU of its own: nvidia-smi fails, so locks are named by index."""
    bin_dir = tmp_path / "bin"
    if not bin_dir.exists():
        bin_dir.mkdir()
        (bin_dir / "nvidia-smi").write_text("#!/bin/sh\nexit 9\n")
        (bin_dir / "nvidia-smi").chmod(0o755)
    env = os.environ | {
        "PYTHONPATH": str(REPO),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
    }
    for variable in ("SLURM_JOB_ID", "CUDA_VISIBLE_DEVICES", "EMFLOW_GPUS", "EMFLOW_JOBS_PER_GPU"):
        env.pop(variable, None)
    if per_gpu is not None:
        env["EMFLOW_JOBS_PER_GPU"] = per_gpu
    return env


def hold(tmp_path: Path, gpus: str, seconds: float, per_gpu: str | None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", HOLD, gpus, str(tmp_path / "locks"), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
        env=_env(tmp_path, per_gpu),
    )


def test_two_jobs_per_gpu_fill_every_card_before_sharing_one(tmp_path):
    holders = []
    try:
        got = []
        for _ in range(4):
            holders.append(hold(tmp_path, "0,1", 60, "2"))
            got.append(holders[-1].stdout.readline().strip())
        # The second job takes the idle card, not a second slot of the first one's.
        assert got[:2] == ["0", "1"] and sorted(got[2:]) == ["0", "1"]
        assert sorted(p.name for p in (tmp_path / "locks").iterdir()) == [
            "gpu0.1.lock",
            "gpu0.lock",
            "gpu1.1.lock",
            "gpu1.lock",
        ]
        # Every slot held: a fifth waits rather than putting a third job on a card ...
        fifth = hold(tmp_path, "0,1", 0, "2")
        holders.append(fifth)
        time.sleep(1.0)
        assert fifth.poll() is None
        # ... until a job ends, and takes its slot.
        holders[2].kill()
        holders[2].wait()
        assert fifth.stdout.readline().strip() == got[2]
        assert fifth.wait(timeout=30) == 0
    finally:
        for process in holders:
            process.kill()
            process.wait()


def test_by_default_a_gpu_holds_one_job_under_todays_lock(tmp_path):
    first = hold(tmp_path, "0", 60, None)
    second = None
    try:
        assert first.stdout.readline().strip() == "0"
        assert [p.name for p in (tmp_path / "locks").iterdir()] == ["gpu0.lock"]
        second = hold(tmp_path, "0", 0, "1")
        time.sleep(1.0)
        assert second.poll() is None  # EMFLOW_JOBS_PER_GPU=1 is the default: it waits
    finally:
        for process in (first, second):
            if process is not None:
                process.kill()
                process.wait()


def test_a_job_counted_one_per_gpu_holds_slot_0_for_a_run_sharing_cards(tmp_path):
    """Two snakemake runs on one machine, one with EMFLOW_JOBS_PER_GPU unset and one with 2:
    together they still put at most two jobs on the card."""
    alone = hold(tmp_path, "0", 60, None)
    sharing = third = None
    try:
        assert alone.stdout.readline().strip() == "0"
        sharing = hold(tmp_path, "0", 60, "2")
        assert sharing.stdout.readline().strip() == "0"
        third = hold(tmp_path, "0", 0, "2")
        time.sleep(1.0)
        assert third.poll() is None
    finally:
        for process in (alone, sharing, third):
            if process is not None:
                process.kill()
                process.wait()


@pytest.mark.parametrize("value", ["0", "two", "-1", "1.5"])
def test_a_bad_job_count_is_one_sentence(monkeypatch, tmp_path, value):
    monkeypatch.setenv("EMFLOW_JOBS_PER_GPU", value)
    with pytest.raises(EmflowError) as raised:
        jobs_per_gpu()
    message = str(raised.value)
    assert message.startswith(f"EMFLOW_JOBS_PER_GPU={value} is not a whole number"), message
    assert message.count(". ") == 0, message
    monkeypatch.setenv("EMFLOW_GPUS", "0")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    with pytest.raises(EmflowError), gpu_slot(None, tmp_path / "locks"):
        pass


def test_snakemake_runs_k_jobs_per_gpu_and_no_more(tmp_path):
    """The README's one-box command with two jobs per card on one GPU: `--resources gpu=2`."""
    # No cap above the slots' own: were a third job to start, its slot lock would hold it back.
    records = run_recorded_jobs(tmp_path, _env(tmp_path, "2") | {"EMFLOW_GPUS": "0"})
    assert len(records) == 6 and {r["gpu"] for r in records} == {"0"}
    moments = sorted({r["start"] for r in records})
    running = [sum(r["start"] <= t < r["end"] for r in records) for t in moments]
    assert max(running) == 2, running
