rule decrypt_datasets:
    input:
        get_archive,
    output:
        expand(f"{RESULTS}/datasets/upstream/{{dataset}}.jsonl", dataset=UPSTREAM),
    log:
        f"{RESULTS}/logs/decrypt_datasets.log",
    conda:
        "../envs/workflow.yaml"
    params:
        archive=config["datasets"]["archive"],
        password=config["datasets"]["password"],
        names=UPSTREAM,
    script:
        "../scripts/decrypt_datasets.py"


rule synthetic_datasets:
    output:
        expand(f"{RESULTS}/datasets/synthetic/{{dataset}}.jsonl", dataset=SYNTHETIC),
    log:
        f"{RESULTS}/logs/synthetic_datasets.log",
    conda:
        "../envs/workflow.yaml"
    params:
        rows={
            name: config.get("demo", {}).get("synthetic_rows", 64)
            for name in SYNTHETIC
        },
        seed=config["datasets"]["mix_seed"],
    script:
        "../scripts/synthetic_datasets.py"


rule prepare_dataset:
    input:
        get_raw_dataset,
    output:
        f"{RESULTS}/datasets/prepared/{{dataset}}.jsonl",
    log:
        f"{RESULTS}/logs/prepare_dataset/{{dataset}}.log",
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/prepare_dataset.py"


rule mix_dataset:
    input:
        get_mix_sources,
    output:
        jsonl=f"{RESULTS}/datasets/mixed/{{mix}}.jsonl",
        provenance=f"{RESULTS}/datasets/mixed/{{mix}}.provenance.csv",
    log:
        f"{RESULTS}/logs/mix_dataset/{{mix}}.log",
    conda:
        "../envs/workflow.yaml"
    params:
        rows=lambda wildcards: MIXES[wildcards.mix],
        seed=config["datasets"]["mix_seed"],
    script:
        "../scripts/mix_dataset.py"


rule build_demo_model:
    input:
        questions=[q["path"] for q in config["generation"]["questions"]],
        prompts=list(config["judge"]["prompts"].values()),
    output:
        directory(DEMO_MODEL or f"{RESULTS}/demo-model"),
    log:
        f"{RESULTS}/logs/build_demo_model.log",
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/build_demo_model.py"
