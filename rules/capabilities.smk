# lm-evaluation-harness on a target (the workflow config's `capabilities`; off by default): the
# harness's own results JSON, from its `hf` model with the run's adapter (`peft=`), one GPU slot
# per job like generate. Which targets: emflow/workflow/capability_plan.py.
rule capabilities:
    input:
        unpack(get_capability_inputs),
    output:
        PATHS.capabilities("{target}"),
    log:
        PATHS.log("capabilities", "{target}"),
    benchmark:
        PATHS.benchmark("capabilities", "{target}")
    conda:
        "../envs/capabilities.yaml"
    resources:
        gpu=gpu_jobs(PLAN.capabilities.device if PLAN.capabilities else "cpu"),
    params:
        capabilities=capability_params_of,
    script:
        "../scripts/capabilities.py"
