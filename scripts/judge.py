"""Score every answer for each judge prompt (rule judge)."""

from pathlib import Path

from emflow.judge import judge_csv, settings_from_config
from emflow.workflow import run_script


def main():
    section = snakemake.config["judge"]
    prompts = {
        metric: Path(snakemake.input[metric]).read_text(encoding="utf-8")
        for metric in snakemake.params.metrics
    }
    # All settings come from the config: params.judge holds the ones that decide the scores
    # (so that changing them reruns the job); endpoint, concurrency, retries and prices do not,
    # and what the config leaves out takes JudgeSettings' default.
    judge_csv(
        snakemake.input.generations,
        snakemake.output.judged,
        prompts,
        settings_from_config(section),
        cache_path=section["cache"],
        usage_json=snakemake.output.usage,
    )


run_script(snakemake, main)
