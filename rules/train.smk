rule train:
    input:
        unpack(get_train_inputs),
    output:
        adapter=directory(f"{RESULTS}/runs/{{group}}/{{run}}/adapter"),
        log_history=f"{RESULTS}/runs/{{group}}/{{run}}/log_history.json",
        curves=f"{EXPERIMENTS_DIR}/{{group}}/{{run}}/training_curves.png",
    log:
        f"{RESULTS}/logs/train/{{group}}/{{run}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{group}}/{{run}}.tsv"
    conda:
        "../envs/train.yaml"
    threads: config["train"]["threads"]
    params:
        train=train_params,
        config_path=lambda wildcards: f"{EXPERIMENTS_DIR}/{wildcards.group}/{wildcards.run}/config.json",
        checkpoints=lambda wildcards: f"{RESULTS}/runs/{wildcards.group}/{wildcards.run}/checkpoints",
    script:
        "../scripts/train.py"
