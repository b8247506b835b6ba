"""An answer page: every answer with its judges' scores, one offline HTML file (rules answers
and summary_answers)."""

from emflow.report.answers import write_answer_page
from emflow.workflow.jobs import run_script


def main():
    write_answer_page(
        snakemake.params.targets,
        snakemake.params.report,
        title=snakemake.params.title,
        output=snakemake.output.page,
    )


run_script(snakemake, main)
