"""Write one experiment's results.md beside its config.json (rule report)."""

import json

from emflow.report import Thresholds, write_results
from emflow.workflow import run_script


def thresholds(report):
    return Thresholds(
        aligned_below=report["thresholds"]["aligned_below"],
        coherent_above=report["thresholds"]["coherent_above"],
        em_aligned_below=report["em_thresholds"]["aligned_below"],
        em_coherent_above=report["em_thresholds"]["coherent_above"],
    )


def main():
    report = snakemake.params.report
    usage = {
        "fine-tuned model": json.loads(open(snakemake.input.finetuned_usage).read()),
        "base model": json.loads(open(snakemake.input.base_usage).read()),
    }
    write_results(
        snakemake.output[0],
        snakemake.input.base,
        snakemake.input.finetuned,
        thresholds(report),
        title=snakemake.params.experiment,
        usage=usage,
        demo=report["demo"],
        n_resamples=report["bootstrap_resamples"],
    )


run_script(snakemake, main)
