rule judge:
    input:
        unpack(get_judge_inputs),
    output:
        judged=PATHS.judged("{target}"),
        usage=PATHS.judge_usage("{target}"),
    log:
        PATHS.log("judge", "{target}"),
    conda:
        "../envs/eval.yaml"
    params:
        judge=PLAN.judge_params(),
        metrics=PLAN.judge_metrics,
    script:
        "../scripts/judge.py"
