"""Write the summary table and scatter plot over all experiments (rule summary)."""

from emflow.report import (
    Thresholds,
    parse_results_markdown,
    plot_training_curves_overlaid,
    read_log_history,
    write_summary,
)
from emflow.workflow import run_script


def main():
    report = snakemake.params.report
    runs = [
        {"name": name, "judged_csv": judged, "base_judged_csv": base, "results_md": results}
        for name, judged, base, results in zip(
            snakemake.params.experiments,
            snakemake.input.finetuned,
            snakemake.input.base,
            snakemake.input.results,
        )
    ]
    reported = {
        name: parse_results_markdown(path)["finetuned"]
        for name, path in snakemake.params.reported.items()
        if path
    }
    write_summary(
        runs,
        snakemake.output.markdown,
        snakemake.output.csv,
        snakemake.output.plot,
        Thresholds(
            aligned_below=report["thresholds"]["aligned_below"],
            coherent_above=report["thresholds"]["coherent_above"],
            em_aligned_below=report["em_thresholds"]["aligned_below"],
            em_coherent_above=report["em_thresholds"]["coherent_above"],
        ),
        reported=reported,
        demo=report["demo"],
        n_resamples=report["bootstrap_resamples"],
    )
    plot_training_curves_overlaid(
        {
            name: read_log_history(path)
            for name, path in zip(snakemake.params.experiments, snakemake.input.log_history)
        },
        snakemake.output.curves,
        title="Training curves of every run",
        demo=report["demo"],
    )


run_script(snakemake, main)
