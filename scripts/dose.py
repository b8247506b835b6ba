"""An experiment's adapter dose-response: table and figure (rule dose)."""

from emflow.report.dose import write_dose
from emflow.workflow.jobs import run_script


def main():
    write_dose(
        snakemake.wildcards.experiment,
        snakemake.params.points,
        base_judged=snakemake.input.base_judged,
        report=snakemake.params.report,
        table_csv=snakemake.output.table,
        plot_png=snakemake.output.plot,
    )


run_script(snakemake, main)
