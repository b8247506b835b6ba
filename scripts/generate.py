"""Answer the question set with a base or fine-tuned model (rule generate)."""

from emflow.generate import GenerationSettings, generate_responses, read_question_sets
from emflow.workflow import run_script


def main():
    params = snakemake.params.generation
    settings = dict(params["settings"])
    questions = read_question_sets(settings.pop("questions"))
    generate_responses(
        params["model"],
        questions,
        snakemake.output[0],
        adapter_dir=snakemake.input.get("adapter"),
        settings=GenerationSettings(**settings),
    )


run_script(snakemake, main)
