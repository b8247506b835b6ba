rule decrypt_datasets:
    input:
        get_archive,
    output:
        [PATHS.raw_dataset("upstream", name) for name in PLAN.upstream],
    log:
        PATHS.log("decrypt_datasets"),
    conda:
        "../envs/workflow.yaml"
    params:
        archive=config["datasets"]["archive"],
        password=config["datasets"]["password"],
        names=PLAN.upstream,
    script:
        "../scripts/decrypt_datasets.py"


rule synthetic_datasets:
    output:
        [PATHS.raw_dataset("synthetic", name) for name in PLAN.synthetic],
    log:
        PATHS.log("synthetic_datasets"),
    conda:
        "../envs/workflow.yaml"
    params:
        rows={
            name: config.get("demo", {}).get("synthetic_rows", 64)
            for name in PLAN.synthetic
        },
        seed=config["datasets"]["mix_seed"],
    script:
        "../scripts/synthetic_datasets.py"


rule prepare_dataset:
    input:
        get_raw_dataset,
    output:
        PATHS.prepared_dataset("{dataset}"),
    log:
        PATHS.log("prepare_dataset", "{dataset}"),
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/prepare_dataset.py"


rule mix_dataset:
    input:
        get_mix_sources,
    output:
        jsonl=PATHS.mixed_dataset("{mix}"),
        provenance=PATHS.mix_provenance("{mix}"),
    log:
        PATHS.log("mix_dataset", "{mix}"),
    conda:
        "../envs/workflow.yaml"
    params:
        rows=lambda wildcards: PLAN.mixes[wildcards.mix],
        seed=config["datasets"]["mix_seed"],
    script:
        "../scripts/mix_dataset.py"


# The tokenizer learns from text bundled with emflow, so that changing the question set or the
# judge prompts never rebuilds the model (and so never retrains the demo's adapters).
rule build_demo_model:
    output:
        directory(PLAN.demo_model or f"{PATHS.results}/demo-model"),
    log:
        PATHS.log("build_demo_model"),
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/build_demo_model.py"
