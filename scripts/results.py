"""Write one experiment's results.md and per-question plot beside its config.json (rule results)."""

from emflow.report.experiment import write_experiment_results
from emflow.workflow.jobs import run_script


def main():
    write_experiment_results(
        snakemake.wildcards.experiment,
        base_judged=snakemake.input.base_judged,
        base_usage=snakemake.input.base_usage,
        finetuned_judged=list(snakemake.input.finetuned_judged),
        finetuned_usage=list(snakemake.input.finetuned_usage),
        seeds=snakemake.params.seeds,
        training_curves=snakemake.input.training_curves,
        results_md=snakemake.output.results,
        question_scores=snakemake.output.question_scores,
        report=snakemake.params.report,
        training_system_prompt=snakemake.params.training_system_prompt,
        sweep_csv=snakemake.input.get("sweep"),
        dose_csv=snakemake.input.get("dose"),
        log_histories=list(snakemake.input.get("log_history", [])),
        question_em_rates=snakemake.output.get("question_em_rates"),
        panel=snakemake.params.get("panel"),
        human_labels=snakemake.input.get("human_labels"),
        answers_page=snakemake.params.answers_page,
        capabilities=(
            {
                "base": snakemake.input.capabilities_base,
                "finetuned": list(snakemake.input.capabilities),
            }
            if "capabilities_base" in snakemake.input.keys()
            else None
        ),
    )


run_script(snakemake, main)
