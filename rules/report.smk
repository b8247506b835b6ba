# `snakemake --report report.html` gathers the summary and each run's results and plots; the
# captions are config/report/*.rst. Per-run files are filed under their group, one row per run.
report: "../config/report/workflow.rst"


rule report:
    input:
        unpack(get_report_inputs),
        # Written by rule train; flagged here so that the report shows it beside the run's results.
        curves=report(
            f"{EXPERIMENTS_DIR}/{{group}}/{{run}}/training_curves.png",
            caption="../config/report/training_curves.rst",
            category="Runs",
            subcategory="{group}",
            labels={"run": "{run}", "shows": "training curves"},
        ),
    output:
        results=report(
            f"{EXPERIMENTS_DIR}/{{group}}/{{run}}/results.md",
            caption="../config/report/results.rst",
            category="Runs",
            subcategory="{group}",
            labels={"run": "{run}", "shows": "results.md"},
        ),
        question_scores=report(
            f"{EXPERIMENTS_DIR}/{{group}}/{{run}}/question_scores.png",
            caption="../config/report/question_scores.rst",
            category="Runs",
            subcategory="{group}",
            labels={"run": "{run}", "shows": "scores per question"},
        ),
    log:
        f"{RESULTS}/logs/report/{{group}}/{{run}}.log",
    conda:
        "../envs/report.yaml"
    params:
        report=report_params,
        experiment=lambda wildcards: f"{wildcards.group}/{wildcards.run}",
        seeds=report_seeds,
    script:
        "../scripts/report.py"


# An experiment with replicates: its seeds' training curves in one plot (a single run's
# training_curves.png comes from rule train).
rule seed_curves:
    input:
        get_seed_log_histories,
    output:
        f"{EXPERIMENTS_DIR}/{{replicated}}/training_curves.png",
    log:
        f"{RESULTS}/logs/seed_curves/{{replicated}}.log",
    conda:
        "../envs/report.yaml"
    params:
        experiment=lambda wildcards: wildcards.replicated,
        seeds=lambda wildcards: EXPERIMENTS[wildcards.replicated].seeds,
        demo=config["report"]["demo"],
    script:
        "../scripts/seed_curves.py"


rule summary:
    input:
        unpack(get_summary_inputs),
    output:
        markdown=report(
            f"{RESULTS}/summary.md",
            caption="../config/report/summary.rst",
            category="Summary",
            labels={"shows": "summary table"},
        ),
        csv=report(
            f"{RESULTS}/summary.csv",
            caption="../config/report/summary_csv.rst",
            category="Summary",
            labels={"shows": "summary table (CSV)"},
        ),
        plot=report(
            f"{RESULTS}/summary.png",
            caption="../config/report/summary_scatter.rst",
            category="Summary",
            labels={"shows": "aligned vs coherent"},
        ),
        curves=report(
            f"{RESULTS}/summary_training_curves.png",
            caption="../config/report/summary_training_curves.rst",
            category="Summary",
            labels={"shows": "training curves of every run"},
        ),
    log:
        f"{RESULTS}/logs/summary.log",
    conda:
        "../envs/report.yaml"
    params:
        report=report_params,
        runs=SUMMARY_RUNS,
        log_histories=SUMMARY_HISTORIES,
        reported=lambda wildcards: {e: reported_results(e) for e in EXPERIMENTS},
    script:
        "../scripts/summary.py"
