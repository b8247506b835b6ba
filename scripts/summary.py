"""The summary table, scatter plot and overlaid training curves of all runs (rule summary)."""

from emflow.report import (
    parse_results_markdown,
    plot_training_curves_overlaid,
    read_log_history,
    write_summary,
)
from emflow.workflow import report_thresholds, run_script


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
        report_thresholds(report),
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
