"""Score every answer for each judge metric (rule judge)."""

from emflow.judge.job import judge_job
from emflow.judge.settings import JudgeSettings
from emflow.workflow.jobs import run_script


def main():
    judge = snakemake.config["judge"]
    # params.judge holds the settings that decide the scores (changing one reruns the job); the
    # plumbing only changes how replies are fetched, stored or priced, so it is read here and
    # reruns nothing. rules/common.smk filled in JudgeSettings' defaults for what the config omits.
    plumbing = ("base_url", "concurrency", "max_retries", "timeout", "retry_base_delay", "prices")
    settings = JudgeSettings(**snakemake.params.judge, **{key: judge[key] for key in plumbing})
    judge_job(
        snakemake.input.generations,
        snakemake.output.judged,
        snakemake.output.usage,
        settings,
        judge["prompts"],
        judge["cache"],
        snakemake.params.metrics,
        snakemake.config["generation"]["questions"],
    )


run_script(snakemake, main)
