"""Validate every row of a dataset and write it in canonical form (rule prepare_dataset)."""

from emflow.data.datasets import prepare_dataset
from emflow.workflow.jobs import run_script

run_script(snakemake, lambda: prepare_dataset(snakemake.input[0], snakemake.output[0]))
