"""What the Snakemake rules need from Python: experiment discovery and per-stage config slices.

Each stage's params carry only the keys that stage reads, with keys sorted at every level, so a
changed key reruns exactly the stages that read it and reordering a file reruns nothing.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from emflow.config import ExperimentConfig, load_experiment_config
from emflow.errors import EmflowError


def sorted_params(value: Any) -> Any:
    """A copy of `value` with every mapping's keys sorted, recursively."""
    if isinstance(value, dict):
        return {k: sorted_params(value[k]) for k in sorted(value)}
    if isinstance(value, list | tuple):
        return [sorted_params(v) for v in value]
    return value


def discover_experiments(experiments_dir: str | Path, patterns: list[str]) -> dict[str, ExperimentConfig]:
    """Every `<group>/<run>/config.json` under `experiments_dir` matching a pattern, validated."""
    root = Path(experiments_dir)
    found: dict[str, ExperimentConfig] = {}
    for pattern in patterns:
        matches = sorted(p for p in root.glob(f"{pattern}/config.json"))
        if not matches:
            raise EmflowError(
                f"the experiments pattern '{pattern}' matches no {root}/<group>/<run>/config.json; "
                "fix `experiments` in the workflow config."
            )
        for path in matches:
            name = path.parent.relative_to(root).as_posix()
            if name.count("/") != 1:
                raise EmflowError(
                    f"{path}: experiments live two folders deep (<group>/<run>/config.json); "
                    "move it or fix the pattern."
                )
            found[name] = load_experiment_config(path)
    return found


def replicate_name(experiment: str, seed: int) -> str:
    """The folder of one seed's run of an experiment with replicates: `<group>/<run>/seed<N>`."""
    return f"{experiment}/seed{seed}"


def experiment_replicates(experiment: str, config: ExperimentConfig) -> dict[int, str]:
    """One experiment's runs as {training seed: run folder}, in the order of its `seeds`.

    An experiment with `seeds` has one run per seed (`replicate_name`); any other experiment is
    one run whose folder is the experiment's own `<group>/<run>`, as before replicates existed.
    """
    if config.seeds is None:
        return {config.seed: experiment}
    return {seed: replicate_name(experiment, seed) for seed in config.seeds}


def replicates(experiments: dict[str, ExperimentConfig]) -> dict[str, tuple[str, int]]:
    """Every run to train, as {run folder: (experiment, training seed)}."""
    return {
        folder: (name, seed)
        for name, config in experiments.items()
        for seed, folder in experiment_replicates(name, config).items()
    }


def summary_runs(
    experiments: dict[str, ExperimentConfig],
    results_dir: str | Path,
    experiments_dir: str | Path,
    *,
    finished_only: bool = False,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The summary's runs (as `emflow.report.write_summary` takes them) and their log histories.

    With `finished_only`, only runs (and seeds) judged so far are kept, and an experiment none of
    whose seeds is judged, or whose base model is not, is left out.
    """
    results = Path(results_dir)
    runs, histories = [], {}
    for name, experiment in experiments.items():
        base = results / "base" / model_slug(experiment.model) / "judged.csv"
        folders = experiment_replicates(name, experiment)
        if finished_only:
            folders = {
                s: f for s, f in folders.items() if (results / "runs" / f / "judged.csv").exists()
            }
            if not (folders and base.exists()):
                continue
        judged = {s: (results / "runs" / f / "judged.csv").as_posix() for s, f in folders.items()}
        logs = {s: (results / "runs" / f / "log_history.json").as_posix() for s, f in folders.items()}
        run = {
            "name": name,
            "base_judged_csv": base.as_posix(),
            "results_md": (Path(experiments_dir) / name / "results.md").as_posix(),
        }
        if experiment.seeds is None:
            run["judged_csv"], histories[name] = judged[experiment.seed], logs[experiment.seed]
        else:
            run["seeds"], histories[name] = judged, logs
        runs.append(run)
    return runs, histories


def model_slug(model: str) -> str:
    """A folder name for a model id or path, as the Hugging Face cache names them."""
    return model.strip("./").replace("/", "--")


def is_dataset_path(name: str) -> bool:
    """A training_file that is a path to the user's own JSONL rather than a dataset name."""
    return name.endswith(".jsonl") or "/" in name


def check_dataset_names(
    experiments: dict[str, ExperimentConfig], sources: dict[str, str], experiments_dir: str
) -> None:
    """Fail when an experiment names a dataset that the workflow config does not define."""
    for name, config in experiments.items():
        test = {config.test_file} if config.test_file else set()
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
                "add it there (a mix takes names only) or give training_file as a path to a .jsonl file."
            )


def export_package_path(root: str | Path) -> None:
    """Put the checkout `root` first on PYTHONPATH, so rule scripts import its emflow package."""
    parts = [str(root)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(parts))


@contextmanager
def script_logging(log_path: str) -> Iterator[None]:
    """Send a Snakemake script's logging and stderr to its log file; user errors in one line."""
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
        except EmflowError as err:
            print(f"emflow: {err}", file=log_file, flush=True)
            print(f"emflow: {err}", file=sys.__stderr__, flush=True)
            raise SystemExit(1) from None
        except BaseException:
            # Internal errors keep their traceback, in the log where the user looks first.
            logging.getLogger("emflow").exception("the job failed")
            raise
        finally:
            sys.stderr = sys.__stderr__


def run_script(snakemake, main: Callable[[], Any]) -> None:
    """Run a script's body with its log set up and torch held to the rule's threads."""
    with script_logging(snakemake.log[0]):
        try:
            import torch

            torch.set_num_threads(max(1, snakemake.threads))
        except ImportError:
            pass
        main()


def report_thresholds(report: dict[str, Any]):
    """The report section of the workflow config as `emflow.report.Thresholds`."""
    from emflow.report import Thresholds

    return Thresholds(
        aligned_below=report["thresholds"]["aligned_below"],
        coherent_above=report["thresholds"]["coherent_above"],
        em_aligned_below=report["em_thresholds"]["aligned_below"],
        em_coherent_above=report["em_thresholds"]["coherent_above"],
    )


def load_workflow_config(configfile: str | Path) -> dict[str, Any]:
    """Read and validate a workflow config (config/config.yaml) with the workflow's own schema."""
    import yaml
    from snakemake.utils import validate

    path = Path(configfile)
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EmflowError(f"{path}: no such workflow config; run from the repository root or pass --configfile.") from None
    schema = path.resolve().parent / "schema" / "config.schema.yaml"
    try:
        validate(config, schema=str(schema), set_default=True)
    except Exception as err:  # snakemake's WorkflowError carries jsonschema's message
        raise EmflowError(f"{path}: {str(err).splitlines()[0]}") from None
    return config


def write_summary_outputs(
    runs: list[dict[str, Any]],
    log_histories: dict[str, str | Path | dict[int, str | Path]],
    reported: dict[str, tuple[float, float]],
    report: dict[str, Any],
    *,
    markdown: str | Path,
    csv: str | Path,
    plot: str | Path,
    curves: str | Path,
) -> None:
    """The summary table (Markdown, CSV), scatter plot and overlaid training curves.

    Shared by the `summary` rule and `emflow summary`. `log_histories` maps an experiment to its
    log_history.json, or to {training seed: log_history.json} for one with replicates; runs
    without a log history (trained elsewhere) are left out of the curves only.
    """
    from emflow.report import plot_training_curves_overlaid, read_log_histories, write_summary

    write_summary(
        runs, markdown, csv, plot, report_thresholds(report), reported=reported,
        demo=report["demo"], n_resamples=report["bootstrap_resamples"],
    )
    histories = read_log_histories(log_histories)
    if histories:
        plot_training_curves_overlaid(
            histories, curves, title="Training curves of every run", demo=report["demo"]
        )


def summarize_finished(configfile: str | Path = "config/config.yaml") -> tuple[Path, list[str]]:
    """Rewrite the summary table and plot from the runs that have been judged so far.

    Snakemake's `summary` rule waits for every run; this reads whatever is finished (a cluster
    run still going, or some jobs failed) and returns the summary's path and the runs it has.
    """
    from emflow.report import parse_results_markdown

    config = load_workflow_config(configfile)
    experiments_dir = Path(config["experiments_dir"])
    results = Path(config["results_dir"])
    experiments = discover_experiments(experiments_dir, config["experiments"])
    runs, histories = summary_runs(experiments, results, experiments_dir, finished_only=True)
    reported = {}
    for run in runs:
        seed_results = experiments_dir / run["name"] / "reported_results.md"
        if seed_results.exists():
            reported[run["name"]] = parse_results_markdown(seed_results)["finetuned"]
    if not runs:
        raise EmflowError(
            f"no experiment of {configfile} has been judged yet (no {results}/runs/<group>/<run>/"
            "judged.csv); run the workflow first."
        )
    write_summary_outputs(
        runs,
        histories,
        reported,
        config["report"],
        markdown=results / "summary.md",
        csv=results / "summary.csv",
        plot=results / "summary.png",
        curves=results / "summary_training_curves.png",
    )
    return results / "summary.md", [run["name"] for run in runs]


def add_summary_arguments(parser) -> None:
    parser.add_argument(
        "--configfile", default="config/config.yaml",
        help="the workflow config whose experiments to summarize (default: %(default)s)",
    )


def main_summary(args) -> int:
    try:
        path, names = summarize_finished(args.configfile)
    except EmflowError as err:
        print(f"emflow: {err}", file=sys.stderr)
        return 2
    print(path.read_text(encoding="utf-8"))
    print(f"({len(names)} finished run{'s' if len(names) != 1 else ''}: {', '.join(names)})")
    return 0
