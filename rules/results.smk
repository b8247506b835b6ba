# `snakemake --report report.html` gathers the summary and each experiment's results and plots;
# the captions are config/report/*.rst. Per-experiment files are filed under their group.
report: "../config/report/workflow.rst"


# An experiment's training curves: one run's, or every seed's in one plot.
rule training_curves:
    input:
        get_curves_inputs,
    output:
        report(
            PATHS.training_curves("{experiment}"),
            caption="../config/report/training_curves.rst",
            category="Experiments",
            subcategory=group_of,
            labels=experiment_labels("training curves"),
        ),
    log:
        PATHS.log("training_curves", "{experiment}"),
    conda:
        "../envs/report.yaml"
    params:
        seeds=lambda wildcards: PLAN.experiments[wildcards.experiment].seeds,
        demo=config["report"]["demo"],
    script:
        "../scripts/training_curves.py"


# An experiment's checkpoint sweep (adapter_checkpoints + eval_checkpoints): scores, EM rate,
# loss and LoRA norm against the optimizer step, as a table and a figure.
rule sweep:
    input:
        unpack(get_sweep_inputs),
    output:
        table=PATHS.sweep("{experiment}", ".csv"),
        plot=report(
            PATHS.sweep("{experiment}"),
            caption="../config/report/sweep.rst",
            category="Experiments",
            subcategory=group_of,
            labels=experiment_labels("checkpoint sweep"),
        ),
    log:
        PATHS.log("sweep", "{experiment}"),
    conda:
        "../envs/report.yaml"
    params:
        report=sorted_params(PLAN.report),
        points=lambda wildcards: PLAN.sweep_points(wildcards.experiment),
    script:
        "../scripts/sweep.py"


# An experiment's adapter dose-response (eval_lora_scales): scores and EM rate against the
# LoRA scale, as a table and a figure.
rule dose:
    input:
        base_judged=lambda wildcards: PATHS.judged(
            base_target(PLAN.experiments[wildcards.experiment].model)
        ),
        judged=lambda wildcards: [
            p["judged"] for p in PLAN.dose_points(wildcards.experiment)
        ],
    output:
        table=PATHS.dose("{experiment}", ".csv"),
        plot=report(
            PATHS.dose("{experiment}"),
            caption="../config/report/dose.rst",
            category="Experiments",
            subcategory=group_of,
            labels=experiment_labels("adapter dose-response"),
        ),
    log:
        PATHS.log("dose", "{experiment}"),
    conda:
        "../envs/report.yaml"
    params:
        report=sorted_params(PLAN.report),
        points=lambda wildcards: PLAN.dose_points(wildcards.experiment),
    script:
        "../scripts/dose.py"


rule results:
    input:
        unpack(get_results_inputs),
        training_curves=PATHS.training_curves("{experiment}"),
    output:
        **QUESTION_EM_OUTPUT,
        results=report(
            PATHS.results_md("{experiment}"),
            caption="../config/report/results.rst",
            category="Experiments",
            subcategory=group_of,
            labels=experiment_labels("results.md"),
        ),
        question_scores=report(
            PATHS.question_scores("{experiment}"),
            caption="../config/report/question_scores.rst",
            category="Experiments",
            subcategory=group_of,
            labels=experiment_labels("scores per question"),
        ),
    log:
        PATHS.log("results", "{experiment}"),
    conda:
        "../envs/report.yaml"
    params:
        **PANEL_PARAMS,
        report=sorted_params(PLAN.report),
        seeds=lambda wildcards: PLAN.experiments[wildcards.experiment].seeds,
        answers_page=lambda wildcards: PATHS.answers(wildcards.experiment),
        training_system_prompt=lambda wildcards: PLAN.experiments[
            wildcards.experiment
        ].training_prompt_text,
    script:
        "../scripts/results.py"


# An experiment's answer page: every answer (base model, runs, sweep steps, LoRA scales) with each
# judge's scores and EM label, filterable, in one offline HTML file (emflow.report.answers).
rule answers:
    input:
        get_answers_inputs,
    output:
        page=report(
            PATHS.answers("{experiment}"),
            caption="../config/report/answers.rst",
            category="Experiments",
            subcategory=group_of,
            labels=experiment_labels("answers"),
        ),
    log:
        PATHS.log("answers", "{experiment}"),
    conda:
        "../envs/report.yaml"
    params:
        report=sorted_params(PLAN.report),
        targets=get_answer_targets,
        title=lambda wildcards: wildcards.experiment,
    script:
        "../scripts/answers.py"


# The answer page over every experiment (each base model once).
rule summary_answers:
    input:
        answer_inputs(summary_answer_targets(PLAN)),
    output:
        page=report(
            PATHS.summary("_answers.html"),
            caption="../config/report/summary_answers.rst",
            category="Summary",
            labels={"shows": "every answer"},
        ),
    log:
        PATHS.log("summary_answers"),
    conda:
        "../envs/report.yaml"
    params:
        report=sorted_params(PLAN.report),
        targets=summary_answer_targets(PLAN),
        title="all experiments",
    script:
        "../scripts/answers.py"


# Every sweep's EM rate against the step, overlaid (only when some experiment has a sweep).
rule summary_sweeps:
    input:
        [PATHS.sweep(e, ".csv") for e in PLAN.sweeps],
    output:
        report(
            PATHS.summary("_sweeps.png"),
            caption="../config/report/summary_sweeps.rst",
            category="Summary",
            labels={"shows": "checkpoint sweeps"},
        ),
    log:
        PATHS.log("summary_sweeps"),
    conda:
        "../envs/report.yaml"
    params:
        experiments=list(PLAN.sweeps),
        demo=config["report"]["demo"],
    script:
        "../scripts/summary_sweeps.py"


# judge.panel: each judge's EM rate in the summary and the judge-vs-judge plot (only with a
# panel, so that a config without one keeps the summary's params and outputs).
SUMMARY_JUDGES_OUTPUT = (
    {
        "judges": report(
            PATHS.summary("_judges.png"),
            caption="../config/report/summary_judges.rst",
            category="Summary",
            labels={"shows": "judge vs judge scores"},
        )
    }
    if PLAN.panel
    else {}
)
SUMMARY_PANEL_PARAMS = {"panel": PLAN.summary_panel()} if PLAN.panel else {}
# capabilities: each task's change in the summary, and EM rate against it (only with the stage).
SUMMARY_CAPABILITIES_OUTPUT = (
    {
        "capabilities": report(
            PATHS.summary("_capabilities.png"),
            caption="../config/report/summary_capabilities.rst",
            category="Summary",
            labels={"shows": "EM rate vs capability change"},
        )
    }
    if PLAN.capabilities
    else {}
)
SUMMARY_CAPABILITIES_PARAMS = (
    {"capabilities": PLAN.summary_capabilities()} if PLAN.capabilities else {}
)


rule summary:
    input:
        unpack(get_summary_inputs),
    output:
        **SUMMARY_JUDGES_OUTPUT,
        **SUMMARY_CAPABILITIES_OUTPUT,
        markdown=report(
            PATHS.summary(".md"),
            caption="../config/report/summary.rst",
            category="Summary",
            labels={"shows": "summary table"},
        ),
        csv=report(
            PATHS.summary(".csv"),
            caption="../config/report/summary_csv.rst",
            category="Summary",
            labels={"shows": "summary table (CSV)"},
        ),
        plot=report(
            PATHS.summary(".png"),
            caption="../config/report/summary_scatter.rst",
            category="Summary",
            labels={"shows": "aligned vs coherent"},
        ),
        curves=report(
            PATHS.summary("_training_curves.png"),
            caption="../config/report/summary_training_curves.rst",
            category="Summary",
            labels={"shows": "training curves of every run"},
        ),
    log:
        PATHS.log("summary"),
    conda:
        "../envs/report.yaml"
    params:
        **SUMMARY_PANEL_PARAMS,
        **SUMMARY_CAPABILITIES_PARAMS,
        report=sorted_params(PLAN.report),
        runs=PLAN.summary_run_params(),
        reported=PLAN.reported_results(),
        answers_page=PATHS.summary("_answers.html"),
    script:
        "../scripts/summary.py"
