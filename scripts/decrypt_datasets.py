"""Decrypt the paper's dataset archive with easy-dataset-share (rule decrypt_datasets)."""

from pathlib import Path

from emflow.data.datasets import decrypt_archive
from emflow.workflow.jobs import run_script


def main():
    output_dir = Path(snakemake.output[0]).parent
    decrypt_archive(
        snakemake.params.archive,
        snakemake.params.password,
        output_dir,
        names=snakemake.params.names,
    )


run_script(snakemake, main)
