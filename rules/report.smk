rule report:
    input:
        unpack(get_report_inputs),
    output:
        f"{EXPERIMENTS_DIR}/{{group}}/{{run}}/results.md",
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
    output:
        markdown=f"{RESULTS}/summary.md",
        csv=f"{RESULTS}/summary.csv",
        plot=f"{RESULTS}/summary.png",
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
