rule generate:
    input:
        unpack(get_generate_inputs),
    output:
        PATHS.generations("{target}"),
    log:
        PATHS.log("generate", "{target}"),
    benchmark:
        PATHS.benchmark("generate", "{target}")
    wildcard_constraints:
        # With generation.sweep_in_one_job, a sweep's steps come from generate_sweep instead.
        target=PLAN.generated_one_by_one,
    # A finished run's answers before the next training (which Snakemake would otherwise pick
    # first, or in any order): memory-bound generation beside compute-bound training fills
    # a shared GPU (EMFLOW_JOBS_PER_GPU); not a param, so it reruns nothing.
    priority: 10
    conda:
        "../envs/train.yaml"
    threads: config["generation"]["threads"]
    resources:
        gpu=gpu_jobs(config["generation"]["device"]),
    params:
        generation=generation_params,
    script:
        "../scripts/generate.py"


# generation.sweep_in_one_job: every evaluated step of a run's sweep answered by one process
# that loads the base model once and merges each step's adapter in turn (emflow.generate.adapters).
# Each step's CSV is the one its own job would write; a newly listed step reruns the whole
# sweep's generation (the judge then finds every unchanged answer in its cache).
rule generate_sweep:
    input:
        unpack(get_generate_sweep_inputs),
    output:
        directory(PATHS.sweep_generations("{run}")),
    log:
        PATHS.log("generate_sweep", "{run}"),
    benchmark:
        PATHS.benchmark("generate_sweep", "{run}")
    priority: 10
    conda:
        "../envs/train.yaml"
    threads: config["generation"]["threads"]
    resources:
        gpu=gpu_jobs(config["generation"]["device"]),
    params:
        generation=generate_sweep_params,
    script:
        "../scripts/generate_sweep.py"


# One step's CSV out of its run's sweep folder, where the judge looks for it.
rule sweep_step_generations:
    input:
        PATHS.sweep_generations("{run}"),
    output:
        PATHS.generations("runs/{run}/step-{step}"),
    log:
        PATHS.log("sweep_step_generations", "{run}/step-{step}"),
    wildcard_constraints:
        run=runs_pattern(PLAN.saving_runs) if PLAN.sweep_in_one_job else "(?!)",
        step=r"[0-9]+",
    conda:
        "../envs/report.yaml"
    script:
        "../scripts/sweep_step_generations.py"


# generation.sweep_in_one_job also answers every scale of a run's dose-response (eval_lora_scales)
# in one job: the base model loads once and the run's adapter is merged at each scale in turn.
# A newly listed scale then reruns the run's whole dose job (off: each scale is its own job).
rule generate_doses:
    input:
        unpack(lambda wildcards: PLAN.generate_inputs(f"runs/{wildcards.run}")),
    output:
        directory(PATHS.dose_generations("{run}")),
    log:
        PATHS.log("generate_doses", "{run}"),
    benchmark:
        PATHS.benchmark("generate_doses", "{run}")
    priority: 10
    conda:
        "../envs/train.yaml"
    threads: config["generation"]["threads"]
    resources:
        gpu=gpu_jobs(config["generation"]["device"]),
    params:
        generation=lambda wildcards: PLAN.generate_doses_params(wildcards.run),
    script:
        "../scripts/generate_doses.py"


# One scale's CSV out of its run's dose folder, where the judge looks for it.
rule dose_scale_generations:
    input:
        PATHS.dose_generations("{run}"),
    output:
        PATHS.generations("runs/{run}/scale-{scale}"),
    log:
        PATHS.log("dose_scale_generations", "{run}/scale-{scale}"),
    wildcard_constraints:
        run=runs_pattern(PLAN.dose_runs) if PLAN.sweep_in_one_job else "(?!)",
        scale=SCALE_PATTERN,
    conda:
        "../envs/report.yaml"
    script:
        "../scripts/dose_scale_generations.py"
