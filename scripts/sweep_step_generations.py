"""One step's generations out of its run's sweep folder (rule sweep_step_generations)."""

from pathlib import Path

from emflow.atomic import atomic_path
from emflow.workflow.jobs import run_script


def main():
    source = Path(snakemake.input[0]) / f"step-{snakemake.wildcards.step}.csv"
    with atomic_path(snakemake.output[0]) as tmp:
        tmp.write_bytes(source.read_bytes())


run_script(snakemake, main)
