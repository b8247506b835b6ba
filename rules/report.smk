# `snakemake --report report.html` gathers the summary and every run's results and plots.
report: "../config/report/workflow.rst"


def run_report(path, caption, item):
    """Flag a per-run file for the Snakemake report, filed under its group, one row per run."""
    return report(
        path,
        caption=f"../config/report/{caption}",
        category="Runs",
        subcategory="{group}",
        labels={"run": "{run}", "shows": item},
    )


def summary_report(path, caption, item):
    return report(
        path,
        caption=f"../config/report/{caption}",
        category="Summary",
        labels={"shows": item},
    )


rule report:
    input:
        unpack(get_report_inputs),
        # Written by rule train; flagged here so that the report shows it beside the run's results.
        curves=run_report(
            f"{EXPERIMENTS_DIR}/{{group}}/{{run}}/training_curves.png",
            "training_curves.rst",
            "training curves",
        ),
    output:
        results=run_report(
            f"{EXPERIMENTS_DIR}/{{group}}/{{run}}/results.md",
            "results.rst",
            "results.md",
        ),
        question_scores=run_report(
            f"{EXPERIMENTS_DIR}/{{group}}/{{run}}/question_scores.png",
            "question_scores.rst",
            "scores per question",
        ),
    log:
        f"{RESULTS}/logs/report/{{group}}/{{run}}.log",
    conda:
        "../envs/report.yaml"
    params:
        report=report_params,
        experiment=lambda wildcards: f"{wildcards.group}/{wildcards.run}",
    script:
        "../scripts/report.py"


rule summary:
    input:
        unpack(get_summary_inputs),
        log_history=[f"{RESULTS}/runs/{e}/log_history.json" for e in EXPERIMENTS],
    output:
        markdown=summary_report(f"{RESULTS}/summary.md", "summary.rst", "summary table"),
        csv=summary_report(
            f"{RESULTS}/summary.csv", "summary_csv.rst", "summary table (CSV)"
        ),
        plot=summary_report(
            f"{RESULTS}/summary.png", "summary_scatter.rst", "aligned vs coherent"
        ),
        curves=summary_report(
            f"{RESULTS}/summary_training_curves.png",
            "summary_training_curves.rst",
            "training curves of every run",
        ),
    log:
        f"{RESULTS}/logs/summary.log",
    conda:
        "../envs/report.yaml"
    params:
        report=report_params,
        experiments=list(EXPERIMENTS),
        reported=lambda wildcards: {e: reported_results(e) for e in EXPERIMENTS},
    script:
        "../scripts/summary.py"
