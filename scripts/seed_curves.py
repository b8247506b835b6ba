"""One plot of the training curves of an experiment's seeds (rule seed_curves)."""

from emflow.report import plot_training_curves_overlaid, read_log_histories
from emflow.workflow import run_script


def main():
    name = snakemake.params.experiment
    paths = dict(zip(snakemake.params.seeds, snakemake.input))
    plot_training_curves_overlaid(
        read_log_histories({name: paths}),
        snakemake.output[0],
        title=f"{name}: training curves of each seed",
        demo=snakemake.params.demo,
    )


run_script(snakemake, main)
