"""Score every answer for each judge metric with one judge of judge.panel (rule judge_panel)."""

from emflow.judge.job import judge_job
from emflow.judge.settings import panel_prompt_files, panel_settings
from emflow.workflow.jobs import run_script


def main():
    judge = snakemake.config["judge"]
    # The panel judge's own keys over the primary's section: params.judge holds its score
    # settings (changing one reruns this job), the plumbing is the primary's or its base_url.
    name = snakemake.wildcards.judge
    settings = panel_settings(judge)[name]
    judge_job(
        snakemake.input.generations,
        snakemake.output.judged,
        snakemake.output.usage,
        settings,
        # Its own templates over the primary's (judge.panel[i].prompts); a question set's own
        # judge_prompts still win per question.
        panel_prompt_files(judge, name),
        judge["cache"],
        snakemake.params.metrics,
        snakemake.config["generation"]["questions"],
    )


run_script(snakemake, main)
