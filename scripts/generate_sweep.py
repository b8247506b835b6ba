"""Answer the question sets with every evaluated step of one run's sweep (rule generate_sweep)."""

from pathlib import Path

from emflow.generate.job import generate_sweep_job
from emflow.generate.settings import PLUMBING
from emflow.workflow.jobs import run_script


def main():
    params = snakemake.params.generation
    # As scripts/generate.py: what decides the answers from params, PLUMBING from the config.
    plumbing = {k: snakemake.config["generation"][k] for k in PLUMBING}
    folder = Path(snakemake.output[0])
    folder.mkdir(parents=True, exist_ok=True)
    generate_sweep_job(
        params["model"],
        params["run"],
        params["settings"] | plumbing,
        {step: folder / f"step-{step}.csv" for step in params["steps"]},
        snakemake.input.adapter,
        samples=params.get("samples"),
        served_models=params.get("served_models"),
    )


run_script(snakemake, main)
