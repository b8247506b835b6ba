"""Plot an experiment's training curves: its run's, or each seed's (rule training_curves)."""

from emflow.report.training_curves import write_training_curves
from emflow.workflow.jobs import run_script


def main():
    write_training_curves(
        snakemake.wildcards.experiment,
        list(snakemake.input),
        snakemake.output[0],
        seeds=snakemake.params.seeds,
        demo=snakemake.params.demo,
    )


run_script(snakemake, main)
