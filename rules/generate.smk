rule generate:
    input:
        unpack(get_generate_inputs),
        questions=[q["path"] for q in config["generation"]["questions"]],
    output:
        f"{RESULTS}/{{target}}/generations.csv",
    log:
        f"{RESULTS}/logs/generate/{{target}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/generate/{{target}}.tsv"
    conda:
        "../envs/train.yaml"
    threads: config["generation"]["threads"]
    params:
        generation=generation_params,
    script:
        "../scripts/generate.py"
