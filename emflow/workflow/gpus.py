"""One GPU per job on one machine: each running GPU job holds a slot, and sees only its GPU.

Snakemake's `--resources gpu=N` caps how many GPU jobs run at once, but does not say which GPU
each one takes: without this, every job would start on GPU 0. A job takes the first free slot
by locking `<lock dir>/<GPU>.lock` (an flock, which the kernel releases when the process ends,
however it ends) and sets CUDA_VISIBLE_DEVICES to that GPU before torch starts CUDA. When every
slot is taken (more GPU jobs running than GPUs), the job waits for one rather than sharing.

Several jobs per GPU: EMFLOW_JOBS_PER_GPU=K (default 1) gives each GPU K slots, so that
`--resources gpu=<GPUs x K>` runs K GPU jobs on each card at once (small models leave most of a
card idle, and a memory-bound generation beside a compute-bound training fills it better). Slot
0 of a GPU is `<GPU>.lock`, as with one job per GPU, and slot k > 0 is `<GPU>.<k>.lock`; a job
takes slot 0 of every GPU before slot 1 of any, so jobs spread over the cards first. The fast
decode loop, the one stage that sizes itself from free memory, then keeps to a K-th of the card
(emflow.generate.fast_decode.rows_that_fit); a training's memory is fixed by its config. Choose
K from a measurement (benchmarks/README.md).

Which GPUs a job chooses from: EMFLOW_GPUS if set, else CUDA_VISIBLE_DEVICES (as CUDA reads it:
the entries before the first it cannot parse), else every GPU nvidia-smi lists. The lock dir is
EMFLOW_GPU_LOCK_DIR, by default a folder of this user's in the temp dir.

A lock names the physical GPU: its UUID, which nvidia-smi maps from the index (or the UUID
prefix) in CUDA_VISIBLE_DEVICES; a MIG id names its instance itself. Two SLURM allocations on
one node each see their own GPUs renumbered from 0, so their jobs never wait for each other,
while two that share a physical GPU do. Where nvidia-smi cannot tell, the lock is the index,
within the SLURM allocation when there is one (the only place an allocation's index means
something).

SLURM: slots step aside only for a job that an executor plugin placed itself: the SLURM
executor submits each job as its own `sbatch`, whose `srun` step (slurm-jobstep) gets the job
its own GPUs and runs it in a Snakemake started with `--mode remote`, which is how Snakemake
starts every job an executor plugin runs on the job's node (a run on the user's machine is
`--mode default`, a job the local executor spawns `--mode subprocess`). There the job keeps the
CUDA_VISIBLE_DEVICES SLURM set, and an EMFLOW_GPUS that `sbatch --export=ALL` carried over from
the login shell is ignored. A Snakemake run by the user inside an allocation (`salloc`,
`sbatch`, `srun --pty`) runs its jobs locally, several at once: they take slots among the
allocation's GPUs like on any machine. SLURM_JOB_ID and SLURM_STEP_ID cannot tell the two apart
(both are set inside `srun --pty bash`, and the SLURM executor's job has a step too), so the
`--mode` of the Snakemake process that runs the job is the signal, read from /proc. Were it
ever missed (a container hiding the parent processes), the job would still take a slot among
the GPUs SLURM gave its step, unless EMFLOW_GPUS came along from the login shell.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from emflow.devices import jobs_per_gpu
from emflow.errors import EmflowError

log = logging.getLogger("emflow.gpus")

# Which GPUs local jobs may use, e.g. "0,1,2,3": where nvidia-smi cannot tell, or to keep some
# GPUs for other work. By default, every GPU nvidia-smi lists (or CUDA_VISIBLE_DEVICES names).
GPUS_VARIABLE = "EMFLOW_GPUS"
# Where the slot locks live; must be on this machine (an index names a GPU of this machine).
LOCK_DIR_VARIABLE = "EMFLOW_GPU_LOCK_DIR"
DEFAULT_LOCK_DIR = Path(tempfile.gettempdir()) / f"emflow-gpu-slots-{os.getuid()}"

# The entries CUDA_VISIBLE_DEVICES takes: an index, a GPU UUID (or a prefix of one), a MIG id
# (`MIG-<uuid>`, or `MIG-GPU-<uuid>/<gpu instance>/<compute instance>` before driver R470).
GPU_ID = re.compile(r"\d+|GPU-[0-9A-Fa-f-]+|MIG-[0-9A-Za-z-]+(/\d+/\d+)?")


def _gpu_list(value: str) -> list[str]:
    return [gpu.strip() for gpu in value.split(",") if gpu.strip()]


def visible_gpus() -> list[str]:
    """The GPUs this machine's jobs may use, as CUDA_VISIBLE_DEVICES entries."""
    value = os.environ.get(GPUS_VARIABLE)
    if value is not None:
        gpus = [gpu for gpu in _gpu_list(value) if gpu != "-1"]
        for gpu in gpus:
            if not GPU_ID.fullmatch(gpu):
                raise EmflowError(
                    f"{GPUS_VARIABLE}={value}: '{gpu}' is not a GPU index (0, 1, ...), GPU UUID "
                    f"(GPU-...) or MIG id (MIG-...); set {GPUS_VARIABLE} to the GPUs jobs may "
                    "use, e.g. 0,1, or unset it to use every GPU."
                )
        return gpus
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is not None:
        gpus = []
        for gpu in _gpu_list(value):
            if not GPU_ID.fullmatch(gpu):
                break  # CUDA ignores this entry and every one after it ("-1" means no GPU)
            gpus.append(gpu)
        return gpus
    return list(_nvidia_smi_uuids())


def _slot_name(lock_name: str, slot: int) -> str:
    """Slot `slot` of the GPU whose one-job lock is `lock_name`: slot 0 is that lock itself, so
    runs with different EMFLOW_JOBS_PER_GPU on one machine still count each other's jobs."""
    return lock_name if slot == 0 else lock_name.removesuffix(".lock") + f".{slot}.lock"


def _nvidia_smi_uuids() -> dict[str, str]:
    """Index -> UUID of every GPU nvidia-smi lists; empty where it is missing or fails."""
    if shutil.which("nvidia-smi") is None:
        return {}
    try:
        listed = subprocess.run(
            ["nvidia-smi", "--query-gpu=index,uuid", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    uuids = {}
    for line in listed.splitlines():
        index, _, uuid = (part.strip() for part in line.partition(","))
        if index.isdigit() and uuid.startswith("GPU-"):
            uuids[str(int(index))] = uuid
    return uuids


def _lock_name(gpu: str, uuids: dict[str, str]) -> str:
    """The lock file of the physical GPU (or MIG instance) that the entry `gpu` names."""
    if gpu.isdigit():
        index = str(int(gpu))
        key = uuids.get(index)
        if key is None:
            job = os.environ.get("SLURM_JOB_ID")
            key = f"slurm-job{job}-gpu{index}" if job else f"gpu{index}"
    elif gpu.upper().startswith("GPU-"):
        # CUDA takes any unique prefix of a UUID; lock the full one, as another job may name it.
        matches = [uuid for uuid in uuids.values() if uuid.lower().startswith(gpu.lower())]
        key = matches[0] if len(matches) == 1 else gpu
    else:
        key = gpu  # a MIG id names one instance of one physical GPU already
    # An old-style MIG id holds "/", which would make the lock a path into folders that do not
    # exist; no GPU id holds "_", so the replacement cannot make two ids one.
    return re.sub(r"[^0-9A-Za-z.-]", "_", key) + ".lock"


def _snakemake_mode(argv: list[str]) -> str | None:
    """The `--mode` of a Snakemake command line; None when `argv` does not run Snakemake."""
    runs_snakemake = any(Path(arg).name == "snakemake" for arg in argv[:2]) or any(
        argv[i : i + 2] == ["-m", "snakemake"] for i in range(min(len(argv), 4))
    )
    if not runs_snakemake:
        return None
    for i, arg in enumerate(argv):
        if arg == "--mode" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--mode="):
            return arg.partition("=")[2]
    return "default"


def launched_by_executor() -> bool:
    """Whether the Snakemake process running this job was started by an executor plugin on the
    job's node (`--mode remote`: the SLURM executor's job step), which placed the job itself."""
    pid = os.getpid()
    for _ in range(32):  # the job's script, a shell or two, then Snakemake
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False  # no /proc (not Linux) or the parent is gone
        mode = _snakemake_mode([arg for arg in argv.split("\0") if arg])
        # A job the local executor spawned (`--mode subprocess`) answers to the Snakemake above.
        if mode is not None and mode != "subprocess":
            return mode == "remote"
        # The command name in field 2 may hold spaces and parentheses; the parent follows it.
        pid = int(stat.rpartition(")")[2].split()[1])
        if pid <= 1:
            return False
    return False


def _make_lock_dir(lock_dir: Path) -> None:
    try:
        lock_dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise EmflowError(
            f"the GPU lock folder {lock_dir} is a file, or lies under one; remove that file or "
            f"set {LOCK_DIR_VARIABLE} to a folder of yours."
        ) from None
    except OSError as err:
        raise EmflowError(
            f"cannot create the GPU lock folder {lock_dir} ({err.strerror}); set "
            f"{LOCK_DIR_VARIABLE} to a folder you can write."
        ) from None


def _try_lock(path: Path) -> int | None:
    """The descriptor holding `path`'s lock, or None when another process holds it."""
    try:
        # Read-only is enough for an flock, and takes a lock file that another user made in a
        # shared EMFLOW_GPU_LOCK_DIR too.
        fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o666)
    except IsADirectoryError:
        raise EmflowError(
            f"the GPU lock {path} is a folder, not a file; remove it (rmdir) or set "
            f"{LOCK_DIR_VARIABLE} to another folder."
        ) from None
    except OSError as err:
        raise EmflowError(
            f"cannot create the GPU lock {path} ({err.strerror}); make {path.parent} writable "
            f"for you or set {LOCK_DIR_VARIABLE} to a folder you can write."
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd  # held open for the job's lifetime: the lock lives with it


@contextlib.contextmanager
def gpu_slot(
    gpus: list[str] | None = None,
    lock_dir: str | os.PathLike | None = None,
    poll_seconds: float = 2.0,
    per_gpu: int | None = None,
) -> Iterator[str | None]:
    """Hold one free slot of `gpus` (default: `visible_gpus()`) for the block; yield its GPU id.

    Each GPU has `per_gpu` slots (default: `jobs_per_gpu()`). The locks live in `lock_dir`
    (default: EMFLOW_GPU_LOCK_DIR, else DEFAULT_LOCK_DIR). Yields None, holding nothing, on a
    machine without GPUs and in a job an executor placed itself.
    """
    if launched_by_executor():
        log.info(
            "the executor placed this job: keeping CUDA_VISIBLE_DEVICES=%s",
            os.environ.get("CUDA_VISIBLE_DEVICES", "(unset)"),
        )
        yield None
        return
    gpus = visible_gpus() if gpus is None else gpus
    if not gpus:
        yield None
        return
    if lock_dir is None:
        lock_dir = os.environ.get(LOCK_DIR_VARIABLE) or DEFAULT_LOCK_DIR
    lock_dir = Path(lock_dir)
    _make_lock_dir(lock_dir)
    per_gpu = jobs_per_gpu() if per_gpu is None else per_gpu
    uuids = _nvidia_smi_uuids()
    cards: dict[str, str] = {}  # lock file -> the GPU entry; two entries may name one GPU
    for gpu in gpus:
        cards.setdefault(_lock_name(gpu, uuids), gpu)
    # Slot 0 of every GPU before slot 1 of any: a second job shares a card only when all are busy.
    slots = {_slot_name(name, slot): gpu for slot in range(per_gpu) for name, gpu in cards.items()}
    waited = False
    while True:
        for name, gpu in slots.items():
            fd = _try_lock(lock_dir / name)
            if fd is None:
                continue
            try:
                if waited:
                    log.info("GPU %s is free now", gpu)
                yield gpu
            finally:
                os.close(fd)  # releases the lock
            return
        if not waited:
            log.info(
                "every slot of the GPUs (%s, %d jobs each) is held by another job; waiting for "
                "one (run with --resources gpu=%d to keep Snakemake from starting more GPU "
                "jobs than slots)",
                ",".join(cards.values()),
                per_gpu,
                len(slots),
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
