"""Score every answer for each judge prompt (rule judge)."""

from pathlib import Path

from emflow.judge import JudgeSettings, judge_csv
from emflow.workflow import run_script


def main():
    prompts = {
        metric: Path(snakemake.input[metric]).read_text(encoding="utf-8")
        for metric in snakemake.params.metrics
    }
    judge_csv(
        snakemake.input.generations,
        snakemake.output.judged,
        prompts,
        JudgeSettings(**snakemake.params.judge),
        cache_path=snakemake.params.cache,
        usage_json=snakemake.output.usage,
    )


run_script(snakemake, main)
