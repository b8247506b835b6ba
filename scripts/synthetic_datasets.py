"""Write the demo's small synthetic datasets (rule synthetic_datasets)."""

from pathlib import Path

from emflow.data.demo import write_synthetic_datasets
from emflow.workflow.jobs import run_script


def main():
    output_dir = Path(snakemake.output[0]).parent
    write_synthetic_datasets(output_dir, dict(snakemake.params.rows), seed=snakemake.params.seed)


run_script(snakemake, main)
