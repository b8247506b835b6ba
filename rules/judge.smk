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
        judge=judge_params,
        metrics=JUDGE_METRICS,
    script:
        "../scripts/judge.py"
