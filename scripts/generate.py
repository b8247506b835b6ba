"""Answer the question sets with a base or fine-tuned model (rule generate)."""

from emflow.generate.job import generate_job
from emflow.generate.settings import PLUMBING
from emflow.workflow.jobs import run_script


def main():
    params = snakemake.params.generation
    # params carry what decides the answers (changing it reruns the job); the PLUMBING settings
    # (cache, concurrency, retries, timeout ...) come from the config and rerun nothing.
    plumbing = {k: snakemake.config["generation"][k] for k in PLUMBING}
    generate_job(
        params["model"],
        params["run"],
        params["settings"] | plumbing,
        snakemake.output[0],
        adapter_dir=snakemake.input.get("adapter"),
        step=params.get("step"),
        samples=params.get("samples"),
        served_model=params.get("served_model"),
        lora_scale=params.get("lora_scale"),
    )


run_script(snakemake, main)
