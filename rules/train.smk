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
    wildcard_constraints:
        run=rf"(?!(?:{runs_pattern(PLAN.saving_runs)})(?:/|$)){RUN_PATTERN}",
    conda:
        "../envs/train.yaml"
    threads: config["train"]["threads"]
    resources:
        gpu=gpu_jobs(config["train"]["device"]),
    params:
        train=train_params,
        # Named in error messages only: the job reads its settings from `train`, not the file.
        source=lambda wildcards: PATHS.config_json(PLAN.runs[wildcards.run][0]),
        checkpoints=lambda wildcards: PATHS.checkpoints(wildcards.run),
    script:
        "../scripts/train.py"


# A run with adapter_checkpoints also keeps the adapters it saved along the way: an output only
# its train job has, so that runs without the key keep exactly the outputs they had.
use rule train as train_saving_checkpoints with:
    output:
        adapter=directory(PATHS.adapter("{run}")),
        log_history=PATHS.log_history("{run}"),
        step_adapters=directory(PATHS.step_adapters("{run}")),
    wildcard_constraints:
        run=runs_pattern(PLAN.saving_runs),
