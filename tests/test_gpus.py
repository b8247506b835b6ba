"""One GPU per job: slots held for a job's lifetime, given back when it ends or is killed.

No GPU is needed: EMFLOW_GPUS names fake GPUs, and the jobs only record what they were given.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import REPO

from emflow.gpus import gpu_slot, visible_gpus

HOLD = """
import sys, time
from emflow.gpus import gpu_slot
with gpu_slot(sys.argv[1].split(","), sys.argv[2], poll_seconds=0.05) as gpu:
    print(gpu, flush=True)
    time.sleep(float(sys.argv[3]))
"""


def hold(gpus: str, lock_dir: Path, seconds: float) -> subprocess.Popen:
    """A process that holds a slot for `seconds`; its first line says which."""
    env = os.environ | {"PYTHONPATH": str(REPO)}
    env.pop("SLURM_JOB_ID", None)
    return subprocess.Popen(
        [sys.executable, "-c", HOLD, gpus, str(lock_dir), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_each_holder_gets_its_own_gpu_and_a_killed_ones_comes_back(tmp_path):
    first, second = hold("0,1", tmp_path, 60), hold("0,1", tmp_path, 60)
    try:
        assert {first.stdout.readline().strip(), second.stdout.readline().strip()} == {"0", "1"}
        # Both taken: a third waits rather than sharing ...
        third = hold("0,1", tmp_path, 0)
        time.sleep(1.0)
        assert third.poll() is None
        # ... until a holder dies (SIGKILL: no clean-up runs, the kernel drops its lock).
        first.send_signal(signal.SIGKILL)
        first.wait()
        assert third.stdout.readline().strip() in {"0", "1"}
        assert third.wait(timeout=30) == 0
    finally:
        for process in (first, second):
            process.kill()
            process.wait()


def test_no_gpus_or_slurm_hold_nothing(tmp_path, monkeypatch):
    with gpu_slot([], tmp_path) as gpu:
        assert gpu is None
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    with gpu_slot(["0"], tmp_path) as gpu:
        assert gpu is None
    assert list(tmp_path.iterdir()) == []


def test_visible_gpus_from_the_environment(monkeypatch):
    monkeypatch.setenv("EMFLOW_GPUS", "2, 3")
    assert visible_gpus() == ["2", "3"]
    monkeypatch.delenv("EMFLOW_GPUS")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []


SNAKEFILE = """
rule all:
    input: expand("out/{i}.json", i=range(6))

rule job:
    output: "out/{i}.json"
    log: "logs/{i}.log"
    resources: gpu=1
    script: "job.py"
"""

JOB = """
import json, os, time
from emflow.workflow import run_script

def main():
    start = time.time()
    time.sleep(1.5)
    record = {"gpu": os.environ.get("CUDA_VISIBLE_DEVICES"), "start": start, "end": time.time()}
    with open(snakemake.output[0], "w") as f:
        json.dump(record, f)

run_script(snakemake, main)
"""


def test_snakemake_jobs_never_share_a_gpu(tmp_path):
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    (tmp_path / "job.py").write_text(textwrap.dedent(JOB))
    env = os.environ | {
        "PYTHONPATH": str(REPO),
        "EMFLOW_GPUS": "0,1",
        "TMPDIR": str(tmp_path / "tmp"),
    }
    env.pop("SLURM_JOB_ID", None)
    (tmp_path / "tmp").mkdir()
    # More cores than GPUs and no --resources cap: the slots alone keep the jobs apart.
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "4"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    records = [json.loads(p.read_text()) for p in sorted((tmp_path / "out").glob("*.json"))]
    assert len(records) == 6 and {r["gpu"] for r in records} == {"0", "1"}
    for i, a in enumerate(records):
        for b in records[i + 1 :]:
            overlap = a["start"] < b["end"] and b["start"] < a["end"]
            assert not (overlap and a["gpu"] == b["gpu"]), (a, b)


REAL_JOB = """
import json, os, sys, time
from emflow.gpus import one_gpu_per_job
with one_gpu_per_job(1):
    import torch
    start = time.time()
    x = torch.randn(4096, 4096, device="cuda")
    for _ in range(200):
        x = torch.tanh(x @ x)
    torch.cuda.synchronize()
    uuid = str(torch.cuda.get_device_properties(0).uuid)
    print(json.dumps({"visible": os.environ["CUDA_VISIBLE_DEVICES"], "uuid": uuid,
                      "start": start, "end": time.time()}), flush=True)
"""


@pytest.mark.gpu
def test_jobs_on_a_machine_with_several_gpus_each_get_their_own(tmp_path):
    """On the real thing: two jobs at once on a machine with two or more GPUs run on two
    different physical GPUs (told apart by their UUIDs), found by nvidia-smi."""
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("needs a machine with two or more GPUs")
    env = os.environ | {"PYTHONPATH": str(REPO), "TMPDIR": str(tmp_path)}
    for variable in ("CUDA_VISIBLE_DEVICES", "EMFLOW_GPUS", "SLURM_JOB_ID"):
        env.pop(variable, None)
    jobs = [
        subprocess.Popen(
            [sys.executable, "-c", REAL_JOB], stdout=subprocess.PIPE, text=True, env=env
        )
        for _ in range(2)
    ]
    records = [json.loads(job.communicate(timeout=300)[0]) for job in jobs]
    print(records)
    assert records[0]["uuid"] != records[1]["uuid"]
    assert records[0]["visible"] != records[1]["visible"]
    assert records[0]["start"] < records[1]["end"] and records[1]["start"] < records[0]["end"]
