from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/datasets.smk"
include: "rules/train.smk"
include: "rules/generate.smk"
include: "rules/judge.smk"
include: "rules/capabilities.smk"
include: "rules/results.smk"


rule all:
    default_target: True
    input:
        PLAN.final_outputs(),
