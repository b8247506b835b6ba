rule generate:
    input:
        unpack(get_generate_inputs),
    output:
        PATHS.generations("{target}"),
    log:
        PATHS.log("generate", "{target}"),
    benchmark:
        PATHS.benchmark("generate", "{target}")
    conda:
        "../envs/train.yaml"
    threads: config["generation"]["threads"]
    resources:
        gpu=gpu_jobs(config["generation"]["device"]),
    params:
        generation=generation_params,
    script:
        "../scripts/generate.py"
