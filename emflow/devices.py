"""Where a stage runs: "auto", "cuda" or "cpu", and the backend "auto" stands for there.

The train and generate stages share these rules (a stage's own config key names its device and
backend, so each error names the key the user wrote).
"""

from __future__ import annotations

import os

from emflow.errors import EmflowError

DEVICES = ("auto", "cpu", "cuda")
# How many jobs may share one GPU at once (emflow.workflow.gpus); 1 keeps each job's GPU its own.
JOBS_PER_GPU_VARIABLE = "EMFLOW_JOBS_PER_GPU"


def resolve_device(device: str, key: str) -> str:
    """Map "auto" to "cuda" when a GPU is visible, else "cpu"; `key` names the setting
    (e.g. "train.device") in the error when it asks for a GPU that is not there."""
    import torch  # heavy, and only where a model runs

    if device not in DEVICES:
        raise EmflowError(f"{key} is '{device}'; use one of {', '.join(DEVICES)}.")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise EmflowError(f"{key} is 'cuda' but no GPU is visible; use 'auto' or 'cpu'.")
    return device


def resolve_backend(backend: str, device: str, backends: tuple[str, ...], key: str) -> str:
    """ "auto" is the stage's fast path on a GPU and its transformers path (hf) on a CPU; any
    other name must be one of `backends` (`key` names the setting in the error)."""
    if backend not in backends:
        raise EmflowError(f"{key} is '{backend}'; use one of {', '.join(backends)}.")
    if backend == "auto":
        return "fast" if device == "cuda" else "hf"
    return backend


def jobs_per_gpu() -> int:
    """How many jobs may hold one GPU at once: EMFLOW_JOBS_PER_GPU, default 1.

    The GPU slots (emflow.workflow.gpus) read it to share a card, and the decode loop to keep
    to its share of the card's memory.
    """
    value = os.environ.get(JOBS_PER_GPU_VARIABLE, "").strip()
    if not value:
        return 1
    if not value.isdigit() or int(value) < 1:
        raise EmflowError(
            f"{JOBS_PER_GPU_VARIABLE}={value} is not a whole number of jobs of 1 or more; set it "
            "to how many jobs may share one GPU (2, say), or unset it for one job per GPU."
        )
    return int(value)
