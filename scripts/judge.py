"""Score every answer for each judge prompt (rule judge)."""

from pathlib import Path

from emflow.judge import JudgeSettings, judge_csv
from emflow.workflow import run_script


def main():
    prompts = {
        metric: Path(snakemake.input[metric]).read_text(encoding="utf-8")
        for metric in snakemake.params.metrics
    }
    # Endpoint, concurrency, retries and prices change no score, so they come from the config
    # rather than from params (which would re-judge everything when they change).
    runtime = {
        key: snakemake.config["judge"][key]
        for key in ("base_url", "concurrency", "max_retries", "timeout", "prices")
    }
    judge_csv(
        snakemake.input.generations,
        snakemake.output.judged,
        prompts,
        JudgeSettings(**snakemake.params.judge, **runtime),
        cache_path=snakemake.config["judge"]["cache"],
        usage_json=snakemake.output.usage,
    )


run_script(snakemake, main)
