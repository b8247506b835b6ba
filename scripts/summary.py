"""The summary table, scatter plot and overlaid training curves of all runs (rule summary)."""

from emflow.report.analysis import SummaryRun
from emflow.report.summary import write_summary
from emflow.workflow.jobs import run_script


def main():
    write_summary(
        [SummaryRun(**run) for run in snakemake.params.runs],
        snakemake.params.report,
        reported=snakemake.params.reported,
        markdown=snakemake.output.markdown,
        csv_path=snakemake.output.csv,
        plot=snakemake.output.plot,
        curves=snakemake.output.curves,
        panel=snakemake.params.get("panel"),
        judges_plot=snakemake.output.get("judges"),
        answers_page=snakemake.params.answers_page,
        capabilities=snakemake.params.get("capabilities"),
        capabilities_plot=snakemake.output.get("capabilities"),
    )


run_script(snakemake, main)
