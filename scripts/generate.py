"""Answer the question sets with a base or fine-tuned model (rule generate)."""

from emflow.generate.job import generate_job
from emflow.workflow.jobs import run_script


def main():
    params = snakemake.params.generation
    # params carry what decides the answers (so that changing it reruns the job); the settings
    # in PLUMBING (cache, concurrency, retries) come from the config and rerun nothing.
    section = snakemake.config["generation"] | {
        "chat_template_kwargs": snakemake.config["chat_template_kwargs"]
    }
    generate_job(
        params["model"],
        params["run"],
        section,
        snakemake.output[0],
        adapter_dir=snakemake.input.get("adapter"),
        step=params.get("step"),
        samples=params.get("samples"),
    )


run_script(snakemake, main)
