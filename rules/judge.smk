rule judge:
    input:
        unpack(get_judge_inputs),
    output:
        judged=PATHS.judged("{target}"),
        usage=PATHS.judge_usage("{target}"),
    log:
        PATHS.log("judge", "{target}"),
    # A finished run's scores before the next training starts (see rule generate).
    priority: 10
    conda:
        "../envs/eval.yaml"
    params:
        judge=PLAN.judge_params(),
        metrics=PLAN.judge_metrics,
    script:
        "../scripts/judge.py"


# judge.panel: each extra judge scores the same answers into judged.<judge>.csv. Its params
# are its own score settings only: changing one panel judge re-judges with that judge alone.
rule judge_panel:
    input:
        unpack(get_panel_judge_inputs),
    output:
        judged=PATHS.panel_judged("{target}", "{judge}"),
        usage=PATHS.panel_judge_usage("{target}", "{judge}"),
    log:
        PATHS.log("judge_panel", "{target}.{judge}"),
    priority: 10
    conda:
        "../envs/eval.yaml"
    params:
        judge=panel_judge_params,
        metrics=PLAN.judge_metrics,
    script:
        "../scripts/judge_panel.py"
