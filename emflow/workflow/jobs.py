"""What the Snakemake rules and scripts need from Python: experiment discovery, config slices,
and the wrapper every rule script runs in.

Each stage's params carry only the keys that stage reads, with keys sorted at every level, so a
changed key reruns exactly the stages that read it and reordering a file reruns nothing.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from emflow.config import ExperimentConfig, load_experiment_config
from emflow.errors import EmflowError
from emflow.workflow.gpus import one_gpu_per_job


def sorted_params(value: Any) -> Any:
    """A copy of `value` with every mapping's keys sorted, recursively."""
    if isinstance(value, dict):
        return {k: sorted_params(value[k]) for k in sorted(value)}
    if isinstance(value, list | tuple):
        return [sorted_params(v) for v in value]
    return value


def discover_experiments(
    experiments_dir: str | Path, patterns: list[str]
) -> dict[str, ExperimentConfig]:
    """Every `<group>/<name>/config.json` under `experiments_dir` matching a pattern, validated."""
    root = Path(experiments_dir)
    found: dict[str, ExperimentConfig] = {}
    for pattern in patterns:
        matches = sorted(p for p in root.glob(f"{pattern}/config.json"))
        if not matches:
            raise EmflowError(
                f"the experiments pattern '{pattern}' matches no {root}/<group>/<name>/"
                "config.json; fix `experiments` in the workflow config."
            )
        for path in matches:
            name = path.parent.relative_to(root).as_posix()
            if name.count("/") != 1:
                raise EmflowError(
                    f"{path}: experiments live two folders deep (<group>/<name>/config.json); "
                    "move it or fix the pattern."
                )
            found[name] = load_experiment_config(path)
    return found


def folders_without_config(experiments_dir: str | Path, patterns: list[str]) -> list[str]:
    """Experiment folders a pattern matches that hold no config.json (skipped by
    `discover_experiments`), as "<folder> (pattern '<pattern>')", for a warning."""
    root = Path(experiments_dir)
    skipped = {}
    for pattern in patterns:
        for folder in sorted(root.glob(pattern)):
            name = folder.relative_to(root).as_posix()
            if folder.is_dir() and name.count("/") == 1 and not (folder / "config.json").exists():
                skipped.setdefault(folder.as_posix(), pattern)
    return [f"{folder} (pattern '{pattern}')" for folder, pattern in skipped.items()]


def is_dataset_path(name: str) -> bool:
    """A training_file that is a path to the user's own JSONL rather than a dataset name."""
    return name.endswith(".jsonl") or "/" in name


def check_dataset_names(
    experiments: dict[str, ExperimentConfig], sources: dict[str, str], experiments_dir: str
) -> None:
    """Fail when an experiment names a dataset that the workflow config does not define."""
    for name, config in experiments.items():
        test = {config.test_file} if config.test_file else set()
        # The KL file may be a path or a name, like the test file.
        if config.kl_regularization and config.kl_dataset_file:
            test.add(config.kl_dataset_file)
        for dataset in sorted(set(config.mix) | test):
            if dataset in sources:
                continue
            # A path to the user's own JSONL serves as the training file or the test file; a
            # mix draws from named datasets only.
            if is_dataset_path(dataset) and (config.datasets is None or dataset in test):
                continue
            raise EmflowError(
                f"{experiments_dir}/{name}/config.json: the dataset '{dataset}' is not in "
                f"datasets.sources of the workflow config (known: {', '.join(sorted(sources))}); "
                "add it there (a mix takes names only) or give training_file as a path to a "
                ".jsonl file."
            )


def export_package_path(root: str | Path) -> None:
    """Put the checkout `root` first on PYTHONPATH, so rule scripts import its emflow package."""
    parts = [str(root)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(parts))


@contextmanager
def script_logging(log_path: str) -> Iterator[None]:
    """Send a Snakemake script's logging and stderr to its log file; user errors in one line."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    with open(log_path, "a", encoding="utf-8") as log_file:
        sys.stderr = log_file
        logging.basicConfig(
            level=logging.INFO,
            format="%(asctime)s %(name)s %(levelname)s %(message)s",
            stream=log_file,
            force=True,
        )
        try:
            yield
        except (EmflowError, OSError) as err:
            if isinstance(err, OSError) and err.errno != errno.ENOSPC:
                logging.getLogger("emflow").exception("the job failed")
                raise
            message = err if isinstance(err, EmflowError) else _disk_full_message(err)
            with contextlib.suppress(OSError):  # the log may sit on the full disk itself
                print(f"emflow: {message}", file=log_file, flush=True)
            print(f"emflow: {message}", file=sys.__stderr__, flush=True)
            raise SystemExit(1) from None
        except BaseException:
            # Internal errors keep their traceback, in the log where the user looks first.
            logging.getLogger("emflow").exception("the job failed")
            raise
        finally:
            sys.stderr = sys.__stderr__
            # Put logging back as it was, so that nothing logs to the closed file afterwards.
            for handler in list(root.handlers):
                root.removeHandler(handler)
                handler.close()
            for handler in handlers:
                root.addHandler(handler)
            root.setLevel(level)


def _disk_full_message(err: OSError) -> str:
    where = f" writing {err.filename}" if err.filename else ""
    return (
        f"the disk is full{where}; free space and rerun: finished outputs and the judge cache "
        "are kept, no output of this job was left half-written, and a training job resumes "
        "from its last checkpoint."
    )


def run_script(snakemake, main: Callable[[], Any]) -> None:
    """Run a script's body with its log set up, its own GPU when the rule asks for one
    (`resources: gpu`, see emflow.workflow.gpus), and torch held to the rule's threads."""
    gpu = int(getattr(snakemake.resources, "gpu", 0) or 0)
    with script_logging(snakemake.log[0]), one_gpu_per_job(gpu):
        try:
            import torch

            torch.set_num_threads(max(1, snakemake.threads))
        except ImportError:
            pass
        main()
