"""Answer the question sets with every evaluated step of one run's sweep (rule generate_sweep)."""

from pathlib import Path

from emflow.generate.job import generate_sweep_job
from emflow.workflow.jobs import run_script


def main():
    params = snakemake.params.generation
    section = snakemake.config["generation"] | {
        "chat_template_kwargs": snakemake.config["chat_template_kwargs"]
    }
    folder = Path(snakemake.output[0])
    folder.mkdir(parents=True, exist_ok=True)
    generate_sweep_job(
        params["model"],
        params["run"],
        section,
        {step: folder / f"step-{step}.csv" for step in params["steps"]},
        snakemake.input.adapter,
        samples=params.get("samples"),
    )


run_script(snakemake, main)
