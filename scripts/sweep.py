"""An experiment's checkpoint sweep: table and figure (rule sweep)."""

from emflow.report.sweeps import write_sweep
from emflow.workflow.jobs import run_script


def main():
    write_sweep(
        snakemake.wildcards.experiment,
        snakemake.params.points,
        base_judged=snakemake.input.base_judged,
        report=snakemake.params.report,
        table_csv=snakemake.output.table,
        plot_png=snakemake.output.plot,
    )


run_script(snakemake, main)
