"""One GPU per job on one machine: each running GPU job holds a slot, and sees only its GPU.

Snakemake's `--resources gpu=N` caps how many GPU jobs run at once, but does not say which GPU
each one takes: without this, every job would start on GPU 0. A job takes the first free slot
by locking `<lock dir>/gpu<i>.lock` (an flock, which the kernel releases when the process ends,
however it ends) and sets CUDA_VISIBLE_DEVICES to that GPU before torch starts CUDA. When every
slot is taken (more GPU jobs running than GPUs), the job waits for one rather than sharing.

Under SLURM the scheduler gives each job its own GPUs and sets CUDA_VISIBLE_DEVICES itself, so
the slots stay out of the way there.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("emflow.gpus")

# Which GPUs local jobs may use, e.g. "0,1,2,3": where nvidia-smi cannot tell, or to keep some
# GPUs for other work. By default, every GPU nvidia-smi lists (or CUDA_VISIBLE_DEVICES names).
GPUS_VARIABLE = "EMFLOW_GPUS"
DEFAULT_LOCK_DIR = Path(tempfile.gettempdir()) / f"emflow-gpu-slots-{os.getuid()}"


def visible_gpus() -> list[str]:
    """The GPUs this machine's jobs may use, as CUDA_VISIBLE_DEVICES entries."""
    for variable in (GPUS_VARIABLE, "CUDA_VISIBLE_DEVICES"):
        value = os.environ.get(variable)
        if value is not None:
            return [gpu.strip() for gpu in value.split(",") if gpu.strip() not in ("", "-1")]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        listed = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(listed.splitlines()) if line.startswith("GPU ")]


def _try_lock(path: Path):
    handle = open(path, "a+")  # held open for the job's lifetime: the lock lives with it
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


@contextlib.contextmanager
def gpu_slot(
    gpus: list[str] | None = None,
    lock_dir: str | os.PathLike = DEFAULT_LOCK_DIR,
    poll_seconds: float = 2.0,
) -> Iterator[str | None]:
    """Hold one free GPU of `gpus` (default: `visible_gpus()`) for the block; yield its id.

    Yields None, holding nothing, on a machine without GPUs or under SLURM.
    """
    gpus = visible_gpus() if gpus is None else gpus
    if not gpus or "SLURM_JOB_ID" in os.environ:
        yield None
        return
    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    waited = False
    while True:
        for gpu in gpus:
            handle = _try_lock(lock_dir / f"gpu{gpu}.lock")
            if handle is None:
                continue
            try:
                if waited:
                    log.info("GPU %s is free now", gpu)
                yield gpu
            finally:
                handle.close()  # releases the lock
            return
        if not waited:
            log.info(
                "every GPU (%s) is held by another job; waiting for one (run with "
                "--resources gpu=%d to keep Snakemake from starting more GPU jobs than GPUs)",
                ",".join(gpus),
                len(gpus),
            )
            waited = True
        time.sleep(poll_seconds)


@contextlib.contextmanager
def one_gpu_per_job(gpu_jobs: int) -> Iterator[None]:
    """For a job that asked for `gpu_jobs` GPUs (a rule's `resources: gpu`): hold a slot and
    make it the only GPU the job's CUDA sees. Jobs that asked for none are left as they are."""
    if gpu_jobs < 1:
        yield
        return
    with gpu_slot() as gpu:
        if gpu is None:
            yield
            return
        previous = os.environ.get("CUDA_VISIBLE_DEVICES")
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
        log.info("running on GPU %s (CUDA_VISIBLE_DEVICES=%s)", gpu, gpu)
        try:
            yield
        finally:
            if previous is None:
                os.environ.pop("CUDA_VISIBLE_DEVICES", None)
            else:
                os.environ["CUDA_VISIBLE_DEVICES"] = previous
