"""`emflow summary`: rewrite the summary from the runs judged so far, with the config read as
Snakemake reads it (config files, overlays, a profile's settings).

The summary itself (tables, CSV, plots) is `emflow.report.summary.write_summary`, which the
`summary` rule also runs once every run is judged.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path

import yaml

from emflow.config import ExperimentConfig
from emflow.errors import EmflowError
from emflow.judge.settings import panel_settings
from emflow.paths import Layout, base_target, experiment_runs, run_target
from emflow.report.settings import report_settings
from emflow.report.summary import experiment_summary_runs, write_summary
from emflow.report.summary_judges import finished_panel
from emflow.workflow.jobs import discover_experiments
from emflow.workflow_config import DEFAULT_WORKFLOW_CONFIG, read_workflow_config


def summarize_finished(
    configfiles: str | Path | list[str | Path] = DEFAULT_WORKFLOW_CONFIG,
    *,
    replace_workflow_config: bool = False,
) -> tuple[Path, list[str]]:
    """Rewrite the summary from the runs judged so far; return its path and the runs it has.

    Snakemake's `summary` rule waits for every run; this reads whatever is finished (a cluster
    run still going, or some jobs failed). The config is built as Snakemake builds it
    (`emflow.workflow_config.read_workflow_config`).
    """
    config = read_workflow_config(configfiles, replace_workflow_config=replace_workflow_config)
    layout = Layout(config["results_dir"], config["experiments_dir"])
    experiments = discover_experiments(layout.experiments, config["experiments"])
    runs = experiment_summary_runs(experiments, layout, finished_only=True)
    if not runs:
        raise EmflowError(_nothing_finished(experiments, layout))
    reported = {r.name: layout.reported_results(r.name) for r in runs}
    # A panel judge counts for an experiment once it has judged every target the summary reads.
    judges = list(panel_settings(config["judge"]))
    write_summary(
        runs,
        report_settings(config),
        reported={name: path for name, path in reported.items() if Path(path).exists()},
        markdown=layout.summary(".md"),
        csv_path=layout.summary(".csv"),
        plot=layout.summary(".png"),
        curves=layout.summary("_training_curves.png"),
        panel=finished_panel(runs, experiments, layout, judges) if judges else None,
        judges_plot=layout.summary("_judges.png") if judges else None,
    )
    return Path(layout.summary(".md")), [run.name for run in runs]


def _nothing_finished(experiments: Mapping[str, ExperimentConfig], layout: Layout) -> str:
    """Why no experiment can be summarized: name the first missing file (a run's judged CSV, or
    the base model's when some run is judged)."""
    for name, experiment in experiments.items():
        judged = [layout.judged(run_target(r)) for r in experiment_runs(name, experiment).values()]
        base = layout.judged(base_target(experiment.model))
        if any(Path(p).exists() for p in judged) and not Path(base).exists():
            return (
                f"{name} is judged but its base model's {base} is missing; run the workflow "
                f"(snakemake {base}) to judge the base model."
            )
    first = next(iter(experiments))
    first_run = next(iter(experiment_runs(first, experiments[first]).values()))
    return (
        f"no experiment has been judged yet (no {layout.judged(run_target(first_run))} nor any "
        "other run's judged.csv); run the workflow first."
    )


def add_summary_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--configfile",
        nargs="+",
        help=f"workflow config files, merged over {DEFAULT_WORKFLOW_CONFIG} as Snakemake merges "
        "them (an overlay such as config/paper.yaml), or alone with --replace-workflow-config",
    )
    parser.add_argument(
        "--replace-workflow-config",
        action="store_true",
        help=f"use the --configfile files alone, without {DEFAULT_WORKFLOW_CONFIG} (Snakemake's "
        "flag of that name)",
    )
    parser.add_argument(
        "--profile",
        help="a Snakemake profile folder whose configfile and replace-workflow-config to use "
        "(e.g. profiles/demo); --configfile wins over it",
    )


def summary_configfiles(args: argparse.Namespace) -> tuple[list[str], bool]:
    """The config files and the replace flag `emflow summary` was given, directly or through a
    Snakemake profile's `configfile` and `replace-workflow-config`."""
    files, replace_config = args.configfile, args.replace_workflow_config
    if args.profile is not None:
        path = Path(args.profile) / "config.yaml"
        try:
            profile = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise EmflowError(
                f"{path}: no such Snakemake profile; give a profile folder such as profiles/demo."
            ) from None
        if not isinstance(profile, dict):
            raise EmflowError(f"{path}: a Snakemake profile must be a mapping of settings.")
        if files is None and profile.get("configfile") is not None:
            given = profile["configfile"]
            files = [given] if isinstance(given, str) else list(given)
        replace_config = replace_config or bool(profile.get("replace-workflow-config", False))
    return files or [DEFAULT_WORKFLOW_CONFIG], replace_config


def main_summary(args: argparse.Namespace) -> int:
    """`emflow summary`: print the summary of the runs judged so far."""
    files, replace_config = summary_configfiles(args)
    path, names = summarize_finished(files, replace_workflow_config=replace_config)
    print(path.read_text(encoding="utf-8"))
    print(f"({len(names)} finished run{'s' if len(names) != 1 else ''}: {', '.join(names)})")
    return 0
