rule judge:
    input:
        unpack(get_judge_inputs),
    output:
        judged=f"{RESULTS}/{{target}}/judged.csv",
        usage=f"{RESULTS}/{{target}}/judge_usage.json",
    log:
        f"{RESULTS}/logs/judge/{{target}}.log",
    conda:
        "../envs/eval.yaml"
    params:
        judge=judge_params,
        metrics=list(config["judge"]["prompts"]),
    script:
        "../scripts/judge.py"
