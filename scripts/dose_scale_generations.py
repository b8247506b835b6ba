"""One scale's generations out of its run's dose folder (rule dose_scale_generations)."""

from pathlib import Path

from emflow.atomic import atomic_path
from emflow.workflow.jobs import run_script


def main():
    source = Path(snakemake.input[0]) / f"scale-{snakemake.wildcards.scale}.csv"
    with atomic_path(snakemake.output[0]) as tmp:
        tmp.write_bytes(source.read_bytes())


run_script(snakemake, main)
