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

from emflow.errors import EmflowError
from emflow.workflow.gpus import gpu_slot, one_gpu_per_job, visible_gpus

HOLD = """
import sys, time
from emflow.workflow.gpus import gpu_slot
gpus = sys.argv[1].split(",") if sys.argv[1] else None  # None: the GPUs the environment names
with gpu_slot(gpus, sys.argv[2] or None, poll_seconds=0.05) as gpu:
    print(gpu, flush=True)
    time.sleep(float(sys.argv[3]))
"""

# nvidia-smi as it answers inside one SLURM allocation (whose cgroup shows only its own GPUs,
# numbered from 0): FAKE_NVIDIA_SMI holds its lines; unset, it fails as it does without a driver.
FAKE_NVIDIA_SMI = """#!/bin/sh
[ "$*" = "--query-gpu=index,uuid --format=csv,noheader" ] || exit 2
if [ -z "$FAKE_NVIDIA_SMI" ]; then
    echo "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."
    exit 9
fi
printf '%b\\n' "$FAKE_NVIDIA_SMI"
"""
UUID_A = "GPU-aaaa1111-2222-3333-4444-555555555555"
UUID_B = "GPU-bbbb1111-2222-3333-4444-555555555555"


def hold(
    gpus: str, lock_dir: Path | None, seconds: float, env: dict | None = None
) -> subprocess.Popen:
    """A process that holds a slot for `seconds`; its first line says which. `gpus` "" takes
    the GPUs the environment names, `env` adds to (or, with None values, removes from) ours."""
    full_env = os.environ | {"PYTHONPATH": str(REPO)}
    for variable in ("SLURM_JOB_ID", "CUDA_VISIBLE_DEVICES", "EMFLOW_GPUS"):
        full_env.pop(variable, None)
    full_env |= env or {}
    return subprocess.Popen(
        [sys.executable, "-c", HOLD, gpus, str(lock_dir or ""), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
        env=full_env,
    )


def fake_nvidia_smi(tmp_path: Path) -> str:
    """A PATH whose nvidia-smi is FAKE_NVIDIA_SMI (a real GPU machine's is shadowed)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text(FAKE_NVIDIA_SMI)
    (bin_dir / "nvidia-smi").chmod(0o755)
    return f"{bin_dir}{os.pathsep}{os.environ['PATH']}"


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


def test_jobs_inside_a_slurm_allocation_take_its_gpus_in_turn(tmp_path):
    """A local snakemake inside `salloc --gpus=2`: SLURM set the job id and the GPUs, and the
    jobs still each get their own."""
    env = {
        "SLURM_JOB_ID": "4242",
        "CUDA_VISIBLE_DEVICES": "0,1",
        "PATH": fake_nvidia_smi(tmp_path),
        "FAKE_NVIDIA_SMI": f"0, {UUID_A}\\n1, {UUID_B}",
    }
    first, second = hold("", tmp_path / "locks", 60, env), hold("", tmp_path / "locks", 60, env)
    try:
        assert {first.stdout.readline().strip(), second.stdout.readline().strip()} == {"0", "1"}
        assert sorted(p.name for p in (tmp_path / "locks").iterdir()) == [
            f"{UUID_A}.lock",
            f"{UUID_B}.lock",
        ]
    finally:
        for process in (first, second):
            process.kill()
            process.wait()


def test_locks_name_the_physical_gpu(tmp_path):
    """Two SLURM allocations on one node each see their own GPU as 0: neither waits for the
    other. A third that shares the first one's physical GPU (named by a UUID prefix) waits."""
    path = fake_nvidia_smi(tmp_path)
    locks = tmp_path / "locks"

    def allocation(job: str, visible: str, gpus: str) -> dict:
        return {
            "PATH": path,
            "SLURM_JOB_ID": job,
            "CUDA_VISIBLE_DEVICES": visible,
            "FAKE_NVIDIA_SMI": gpus,
        }

    first = hold("", locks, 60, allocation("101", "0", f"0, {UUID_A}"))
    second = hold("", locks, 0, allocation("102", "0", f"0, {UUID_B}"))
    third = None
    try:
        assert first.stdout.readline().strip() == "0"
        # The second gets its GPU and is done while the first still holds its own.
        assert second.stdout.readline().strip() == "0"
        assert second.wait(timeout=20) == 0 and first.poll() is None
        assert sorted(p.name for p in locks.iterdir()) == [f"{UUID_A}.lock", f"{UUID_B}.lock"]
        third = hold("", locks, 0, allocation("103", "GPU-aaaa1111", f"0, {UUID_A}"))
        time.sleep(1.0)
        assert third.poll() is None
        first.kill()
        first.wait()
        assert third.stdout.readline().strip() == "GPU-aaaa1111"
        assert third.wait(timeout=30) == 0
    finally:
        for process in (first, second, third):
            if process is not None:
                process.kill()
                process.wait()


def test_without_nvidia_smi_an_index_is_the_allocations_own(tmp_path):
    """Where nvidia-smi fails, GPU 0 of one allocation is not GPU 0 of another: no waiting."""
    env = {"PATH": fake_nvidia_smi(tmp_path), "CUDA_VISIBLE_DEVICES": "0"}
    first = hold("", tmp_path / "locks", 60, env | {"SLURM_JOB_ID": "101"})
    second = hold("", tmp_path / "locks", 0, env | {"SLURM_JOB_ID": "102"})
    try:
        assert first.stdout.readline().strip() == "0"
        assert second.stdout.readline().strip() == "0"
        assert second.wait(timeout=20) == 0 and first.poll() is None
    finally:
        for process in (first, second):
            process.kill()
            process.wait()


def test_mig_ids_are_slots_of_their_own(tmp_path):
    """Old-style MIG ids hold "/": each instance is a slot, its lock a file in the lock folder."""
    env = {
        "SLURM_JOB_ID": "7",
        "CUDA_VISIBLE_DEVICES": f"MIG-{UUID_A}/1/0,MIG-{UUID_A}/2/0",
        "PATH": fake_nvidia_smi(tmp_path),
        "FAKE_NVIDIA_SMI": f"0, {UUID_A}",
    }
    first, second = hold("", tmp_path / "locks", 60, env), hold("", tmp_path / "locks", 60, env)
    try:
        got = {first.stdout.readline().strip(), second.stdout.readline().strip()}
        assert got == {f"MIG-{UUID_A}/1/0", f"MIG-{UUID_A}/2/0"}
        assert all(p.is_file() for p in (tmp_path / "locks").iterdir())
        assert len(list((tmp_path / "locks").iterdir())) == 2
    finally:
        for process in (first, second):
            process.kill()
            process.wait()


def test_no_gpus_hold_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    monkeypatch.delenv("EMFLOW_GPUS", raising=False)
    with gpu_slot(None, tmp_path / "locks") as gpu:
        assert gpu is None
    assert not (tmp_path / "locks").exists()


def test_visible_gpus_from_the_environment(monkeypatch):
    monkeypatch.setenv("EMFLOW_GPUS", "2, 3")
    assert visible_gpus() == ["2", "3"]
    monkeypatch.setenv("EMFLOW_GPUS", "0,gpu1")
    with pytest.raises(EmflowError, match=r"^EMFLOW_GPUS=0,gpu1: 'gpu1' is not a GPU index"):
        visible_gpus()
    monkeypatch.delenv("EMFLOW_GPUS")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []
    # As CUDA reads it: the devices before the first entry it cannot parse.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,GPU-aaaa1111,-1,2")
    assert visible_gpus() == ["1", "GPU-aaaa1111"]


def _bad_lock_dir(tmp_path: Path, case: str) -> tuple[Path, str]:
    """A lock folder that cannot serve, and the start of the sentence that says why."""
    if case == "lock folder is a file":
        (tmp_path / "locks").write_text("")
        return tmp_path / "locks", f"the GPU lock folder {tmp_path / 'locks'} is a file"
    if case == "lock is a folder":
        (tmp_path / "locks" / f"{UUID_A}.lock").mkdir(parents=True)
        return tmp_path / "locks", f"the GPU lock {tmp_path / 'locks' / UUID_A}.lock is a folder"
    # Root writes anywhere chmod allows none; sysfs takes no new files from anyone.
    locks = Path("/sys") if os.geteuid() == 0 else tmp_path / "locks"
    if locks != Path("/sys"):
        locks.mkdir()
        locks.chmod(0o555)
    return locks, f"cannot create the GPU lock {locks / UUID_A}.lock (Permission denied)"


@pytest.mark.parametrize(
    "case", ["lock folder is a file", "lock is a folder", "lock folder is not writable"]
)
def test_a_lock_folder_that_cannot_serve_is_one_sentence(tmp_path, monkeypatch, case):
    locks, expected = _bad_lock_dir(tmp_path, case)
    monkeypatch.setenv("PATH", fake_nvidia_smi(tmp_path))
    monkeypatch.setenv("FAKE_NVIDIA_SMI", f"0, {UUID_A}")
    monkeypatch.setenv("EMFLOW_GPU_LOCK_DIR", str(locks))
    monkeypatch.setenv("EMFLOW_GPUS", "0")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    with pytest.raises(EmflowError) as raised, one_gpu_per_job(1):
        pass
    message = str(raised.value)
    assert message.startswith(expected), message
    assert "EMFLOW_GPU_LOCK_DIR" in message and message.count(". ") == 0, message


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
from emflow.workflow.jobs import run_script

def main():
    start = time.time()
    time.sleep(1.5)
    record = {"gpu": os.environ.get("CUDA_VISIBLE_DEVICES"), "start": start, "end": time.time()}
    with open(snakemake.output[0], "w") as f:
        json.dump(record, f)

run_script(snakemake, main)
"""


def run_recorded_jobs(tmp_path: Path, env: dict) -> list[dict]:
    """Six 1.5-s GPU jobs (SNAKEFILE, JOB) under a real `snakemake --cores 4` with no
    `--resources` cap, so that the slots alone decide; each job's GPU, start and end."""
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    (tmp_path / "job.py").write_text(textwrap.dedent(JOB))
    (tmp_path / "tmp").mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "4"],
        cwd=tmp_path,
        env=env | {"TMPDIR": str(tmp_path / "tmp")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return [json.loads(p.read_text()) for p in sorted((tmp_path / "out").glob("*.json"))]


def test_snakemake_jobs_never_share_a_gpu(tmp_path):
    env = os.environ | {"PYTHONPATH": str(REPO), "EMFLOW_GPUS": "0,1"}
    env.pop("SLURM_JOB_ID", None)
    # More cores than GPUs and no --resources cap: the slots alone keep the jobs apart.
    records = run_recorded_jobs(tmp_path, env)
    assert len(records) == 6 and {r["gpu"] for r in records} == {"0", "1"}
    for i, a in enumerate(records):
        for b in records[i + 1 :]:
            overlap = a["start"] < b["end"] and b["start"] < a["end"]
            assert not (overlap and a["gpu"] == b["gpu"]), (a, b)


RECORD_JOB = """
import json, os
from emflow.workflow.jobs import run_script

def main():
    with open(snakemake.output[0], "w") as f:
        json.dump({"gpu": os.environ.get("CUDA_VISIBLE_DEVICES")}, f)

run_script(snakemake, main)
"""


def test_a_job_the_slurm_executor_placed_keeps_its_gpu(tmp_path):
    """The SLURM executor's job step runs `srun --gpus=1 python -m snakemake ... --mode
    remote`: the job keeps the GPU SLURM gave it, even with EMFLOW_GPUS carried over from the
    login shell (sbatch --export=ALL). The same job run by a local snakemake takes a slot."""
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    (tmp_path / "job.py").write_text(textwrap.dedent(RECORD_JOB))
    locks = tmp_path / "locks"
    env = os.environ | {
        "PYTHONPATH": str(REPO),
        "SLURM_JOB_ID": "4242",
        "SLURM_STEP_ID": "0",
        "CUDA_VISIBLE_DEVICES": "3",
        "EMFLOW_GPUS": "0,1",
        "EMFLOW_GPU_LOCK_DIR": str(locks),
    }

    def snakemake(*args: str) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "snakemake", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stdout + result.stderr

    # The command slurm-jobstep gives srun (snakemake-executor-plugin-slurm-jobstep 0.6),
    # without the arguments that only matter on a real cluster.
    snakemake(
        *("--target-jobs", "job:i=0", "--allowed-rules", "job", "--cores", "all"),
        *("--force-use-threads", "--force", "--nolock", "--mode", "remote"),
    )
    assert json.loads((tmp_path / "out/0.json").read_text())["gpu"] == "3"
    assert not locks.exists()  # no slot taken
    snakemake("--cores", "1", "out/1.json")
    assert json.loads((tmp_path / "out/1.json").read_text())["gpu"] in {"0", "1"}


REAL_JOB = """
import json, os, sys, time
from emflow.workflow.gpus import one_gpu_per_job
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
