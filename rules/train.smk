rule train:
    input:
        unpack(get_train_inputs),
    output:
        adapter=directory(f"{RESULTS}/runs/{{replicate}}/adapter"),
        log_history=f"{RESULTS}/runs/{{replicate}}/log_history.json",
        curves=f"{EXPERIMENTS_DIR}/{{replicate}}/training_curves.png",
    log:
        f"{RESULTS}/logs/train/{{replicate}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{replicate}}.tsv"
    conda:
        "../envs/train.yaml"
    threads: config["train"]["threads"]
    params:
        train=train_params,
        config_path=lambda wildcards: f"{EXPERIMENTS_DIR}/{REPLICATES[wildcards.replicate][0]}/config.json",
        checkpoints=lambda wildcards: f"{RESULTS}/runs/{wildcards.replicate}/checkpoints",
    script:
        "../scripts/train.py"
