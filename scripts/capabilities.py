"""lm-evaluation-harness on one target: its results JSON (rule capabilities)."""

from emflow.capabilities.harness import evaluate_target
from emflow.workflow.jobs import run_script


def main():
    evaluate_target(
        snakemake.params.capabilities,
        adapter=snakemake.input.get("adapter"),
        output_json=snakemake.output[0],
        log=print,
    )


run_script(snakemake, main)
