rule train:
    input:
        unpack(get_train_inputs),
    output:
        adapter=directory(PATHS.adapter("{run}")),
        log_history=PATHS.log_history("{run}"),
    log:
        PATHS.log("train", "{run}"),
    benchmark:
        PATHS.benchmark("train", "{run}")
    conda:
        "../envs/train.yaml"
    threads: config["train"]["threads"]
    resources:
        gpu=gpu_jobs(config["train"]["device"]),
    params:
        train=train_params,
        # Named in error messages only: the job reads its settings from `train`, not the file.
        source=lambda wildcards: PATHS.config_json(RUNS[wildcards.run][0]),
        checkpoints=lambda wildcards: PATHS.checkpoints(wildcards.run),
    script:
        "../scripts/train.py"
