"""The summary table, scatter plot and overlaid training curves of all runs (rule summary)."""

from emflow.report import parse_results_markdown
from emflow.workflow import run_script, write_summary_outputs


def main():
    reported = {
        name: parse_results_markdown(path)["finetuned"]
        for name, path in snakemake.params.reported.items()
        if path
    }
    write_summary_outputs(
        snakemake.params.runs,
        snakemake.params.log_histories,
        reported,
        snakemake.params.report,
        markdown=snakemake.output.markdown,
        csv=snakemake.output.csv,
        plot=snakemake.output.plot,
        curves=snakemake.output.curves,
    )


run_script(snakemake, main)
