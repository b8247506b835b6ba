"""Write one experiment's results.md and per-question plot beside its config.json (rule report)."""

import json
import os

from emflow.report import plot_question_scores, write_results
from emflow.workflow import report_thresholds, run_script


def main():
    report = snakemake.params.report
    usage = {
        "fine-tuned model": json.loads(open(snakemake.input.finetuned_usage).read()),
        "base model": json.loads(open(snakemake.input.base_usage).read()),
    }
    results = snakemake.output.results
    plot_question_scores(
        snakemake.input.base,
        snakemake.input.finetuned,
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
        snakemake.input.finetuned,
        report_thresholds(report),
        title=snakemake.params.experiment,
        usage=usage,
        demo=report["demo"],
        n_resamples=report["bootstrap_resamples"],
        plots=[(text, os.path.relpath(path, os.path.dirname(results))) for text, path in plots],
    )


run_script(snakemake, main)
