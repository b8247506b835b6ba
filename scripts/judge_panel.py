"""Score every answer for each judge metric with one judge of judge.panel (rule judge_panel)."""

from emflow.judge.job import judge_job
from emflow.judge.settings import panel_settings
from emflow.workflow.jobs import run_script


def main():
    judge = snakemake.config["judge"]
    # The panel judge's own keys over the primary's section: params.judge holds its score
    # settings (changing one reruns this job), the plumbing is the primary's or its base_url.
    settings = panel_settings(judge)[snakemake.wildcards.judge]
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
