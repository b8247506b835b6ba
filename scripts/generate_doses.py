"""Answer the question sets at every LoRA scale of one run (rule generate_doses)."""

from pathlib import Path

from emflow.generate.job import generate_scales_job
from emflow.generate.settings import PLUMBING
from emflow.paths import scale_name
from emflow.workflow.jobs import run_script


def main():
    params = snakemake.params.generation
    # As scripts/generate.py: what decides the answers from params, PLUMBING from the config.
    plumbing = {k: snakemake.config["generation"][k] for k in PLUMBING}
    folder = Path(snakemake.output[0])
    folder.mkdir(parents=True, exist_ok=True)
    generate_scales_job(
        params["model"],
        params["settings"] | plumbing,
        {s: folder / f"scale-{scale_name(s)}.csv" for s in params["scales"]},
        snakemake.input.adapter,
    )


run_script(snakemake, main)
