"""Answer the question set with a base or fine-tuned model (rule generate)."""

from emflow.generate import GenerationSettings, generate_responses, read_question_sets
from emflow.workflow import run_script


def main():
    params = snakemake.params.generation
    generate_responses(
        params["model"],
        read_question_sets(params["settings"]["questions"]),
        snakemake.output[0],
        adapter_dir=snakemake.input.get("adapter"),
        settings=GenerationSettings.from_config(params["settings"]),
    )


run_script(snakemake, main)
