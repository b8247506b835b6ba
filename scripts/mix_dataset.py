"""Draw and shuffle a seeded mix of prepared datasets (rule mix_dataset)."""

from emflow.data.datasets import mix_datasets
from emflow.workflow.jobs import run_script


def main():
    rows = snakemake.params.rows
    sources = {
        name: (path, rows[name]) for name, path in zip(sorted(rows), snakemake.input, strict=True)
    }
    mix_datasets(
        sources, snakemake.params.seed, snakemake.output.jsonl, snakemake.output.provenance
    )


run_script(snakemake, main)
