"""Write one experiment's results.md and per-question plot beside its config.json (rule report)."""

import json
import os

from emflow.report import plot_question_scores, write_results
from emflow.workflow import report_thresholds, run_script


def read_json(path):
    with open(path, encoding="utf-8") as file:
        return json.load(file)


def as_list(paths):
    return [paths] if isinstance(paths, str) else list(paths)


def main():
    report = snakemake.params.report
    seeds = snakemake.params.seeds
    judged = as_list(snakemake.input.finetuned)
    usages = [read_json(path) for path in as_list(snakemake.input.finetuned_usage)]
    if seeds is None:
        finetuned = judged[0]
        usage = {"fine-tuned model": usages[0]}
    else:
        # One run per training seed: results.md gives the mean across seeds and each seed's own.
        finetuned = dict(zip(seeds, judged))
        usage = {f"fine-tuned, seed {seed}": u for seed, u in zip(seeds, usages)}
    usage["base model"] = read_json(snakemake.input.base_usage)
    results = snakemake.output.results
    plot_question_scores(
        snakemake.input.base,
        finetuned,
        snakemake.output.question_scores,
        title=snakemake.params.experiment,
        demo=report["demo"],
        thresholds=report_thresholds(report),
    )
    # Links relative to results.md, so that they work wherever the experiment folder is viewed.
    plots = [
        ("Scores per question, fine-tuned vs base model", snakemake.output.question_scores),
        ("Training curves", snakemake.input.curves),
    ]
    write_results(
        results,
        snakemake.input.base,
        finetuned,
        report_thresholds(report),
        title=snakemake.params.experiment,
        usage=usage,
        demo=report["demo"],
        n_resamples=report["bootstrap_resamples"],
        plots=[(text, os.path.relpath(path, os.path.dirname(results))) for text, path in plots],
    )


run_script(snakemake, main)
