"""Every checkpoint sweep's EM rate over training, overlaid (rule summary_sweeps)."""

from emflow.report.sweeps import write_summary_sweeps
from emflow.workflow.jobs import run_script


def main():
    tables = dict(zip(snakemake.params.experiments, snakemake.input, strict=True))
    write_summary_sweeps(tables, snakemake.output[0], demo=snakemake.params.demo)


run_script(snakemake, main)
