"""Score every answer for each judge metric (rule judge)."""

from emflow.judge.job import judge_job
from emflow.workflow.jobs import run_script


def main():
    # All settings come from the config: params.judge holds the ones that decide the scores
    # (so that changing them reruns the job); endpoint, concurrency, retries and prices do not,
    # and what the config leaves out takes JudgeSettings' default.
    judge_job(
        snakemake.input.generations,
        snakemake.output.judged,
        snakemake.output.usage,
        snakemake.config["judge"],
        snakemake.params.metrics,
        snakemake.config["generation"]["questions"],
    )


run_script(snakemake, main)
