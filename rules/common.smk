import sys
from pathlib import Path

from emflow.capabilities.settings import capability_settings
from emflow.errors import EmflowError
from emflow.judge.settings import panel_settings
from emflow.paths import (
    EXPERIMENT_PATTERN,
    RUN_PATTERN,
    SCALE_PATTERN,
    TARGET_PATTERN,
    base_target,
)
from emflow.workflow.answer_targets import (
    answer_inputs,
    answer_targets,
    summary_answer_targets,
)
from emflow.workflow.capability_plan import capability_inputs, capability_params
from emflow.workflow.jobs import export_package_path, sorted_params
from emflow.workflow.plan import Plan, fill_stage_defaults, gpu_jobs, runs_pattern
from emflow.workflow_config import config_source, validate_workflow_config

# emflow's check first: one sentence naming the file and the key (Snakemake's validate prints
# jsonschema's whole dump); then Snakemake's, which fills in the schema's defaults.
# judge.panel's names (unique, not "primary") and own prompt files are checked here too, naming
# the file.
CONFIG_SOURCE = config_source(
    workflow.config_settings.configfiles,
    replace_workflow_config=workflow.config_settings.replace_workflow_config,
)
try:
    validate_workflow_config(config, CONFIG_SOURCE)
    panel_settings(config["judge"], CONFIG_SOURCE, check_files=True)
    # lm-evaluation-harness's task names are looked up once, by the process that plans the jobs
    # (building its task index takes seconds; each job re-reads this file).
    capability_settings(
        config.get("capabilities"),
        source=CONFIG_SOURCE,
        check_tasks=workflow.is_main_process,
    )
except EmflowError as err:
    sys.exit(f"emflow: {err}")
# Each stage's settings dataclass holds its defaults (the schema only checks types and ranges).
fill_stage_defaults(config)

# Scripts import emflow from this checkout, also inside per-rule conda environments and on
# cluster nodes (each job re-reads this file, so the setting travels with it).
export_package_path(Path(workflow.main_snakefile).parent)

# Every experiment, run, mix, sweep and target, and each rule's inputs and params: see
# emflow/workflow/plan.py. Whatever the files on disk can tell (model shape, data rows, question
# files) is checked before any job runs (emflow/workflow/preflight.py), once, in the Snakemake
# process that plans the jobs: each job re-reads this file, and checks what it uses itself.
try:
    PLAN = Plan.from_config(config, preflight=workflow.is_main_process)
except EmflowError as err:
    sys.exit(f"emflow: {err}")
# Every path of this workflow run; see emflow/paths.py for the vocabulary (experiment, run, target).
PATHS = PLAN.paths


wildcard_constraints:
    experiment=EXPERIMENT_PATTERN,
    run=RUN_PATTERN,
    target=TARGET_PATTERN,
    dataset=r"[^/]+",
    mix=r"[^/]+",
    judge=runs_pattern(PLAN.panel),


localrules:
    all,
    decrypt_datasets,
    synthetic_datasets,
    build_demo_model,
    prepare_dataset,
    mix_dataset,
    training_curves,
    results,
    summary,
    sweep,
    dose,
    summary_sweeps,
    sweep_step_generations,
    dose_scale_generations,


# Each rule's input and params functions: the plan's answer for the job's wildcards.


def get_archive(wildcards):
    return PLAN.archive_inputs()


def get_raw_dataset(wildcards):
    return PLAN.raw_dataset(wildcards.dataset)


def get_mix_sources(wildcards):
    return PLAN.mix_sources(wildcards.mix)


def get_train_inputs(wildcards):
    return PLAN.train_inputs(wildcards.run)


def train_params(wildcards):
    return PLAN.train_params(wildcards.run)


def get_generate_inputs(wildcards):
    return PLAN.generate_inputs(wildcards.target)


def generation_params(wildcards):
    return PLAN.generation_params(wildcards.target)


def get_generate_sweep_inputs(wildcards):
    return PLAN.generate_sweep_inputs(wildcards.run)


def generate_sweep_params(wildcards):
    return PLAN.generate_sweep_params(wildcards.run)


def get_judge_inputs(wildcards):
    return PLAN.judge_inputs(wildcards.target)


def get_panel_judge_inputs(wildcards):
    return PLAN.panel_judge_inputs(wildcards.target, wildcards.judge)


def panel_judge_params(wildcards):
    return PLAN.panel_judge_params(wildcards.judge)


def get_curves_inputs(wildcards):
    return PLAN.curves_inputs(wildcards.experiment)


def get_results_inputs(wildcards):
    return PLAN.results_inputs(wildcards.experiment)


def get_sweep_inputs(wildcards):
    return PLAN.sweep_inputs(wildcards.experiment)


def get_summary_inputs(wildcards):
    return PLAN.summary_inputs()


def get_capability_inputs(wildcards):
    return capability_inputs(PLAN, wildcards.target)


def capability_params_of(wildcards):
    return sorted_params(
        capability_params(PLAN, config["capabilities"], wildcards.target)
    )


def get_answer_targets(wildcards):
    return answer_targets(PLAN, wildcards.experiment)


def get_answers_inputs(wildcards):
    return answer_inputs(answer_targets(PLAN, wildcards.experiment))


# The Snakemake report (`snakemake --report`) files each experiment's outputs under its group.


def group_of(wildcards):
    """The group of an {experiment}: the Snakemake report files its outputs under it."""
    return wildcards.experiment.split("/")[0]


def experiment_labels(shows):
    """The report's labels for a file of an {experiment} that `shows` something."""
    return lambda wildcards: {
        "experiment": wildcards.experiment.split("/")[1],
        "shows": shows,
    }


# judge.panel: each experiment's panel judged CSVs for its results (only with a panel, so that
# a config without one keeps the results rule's params and reruns nothing).
PANEL_PARAMS = (
    {"panel": lambda wildcards: PLAN.panel_results(wildcards.experiment)}
    if PLAN.panel
    else {}
)


# Each question's EM rate, drawn only when some question is answered several times.
QUESTION_EM_OUTPUT = (
    {
        "question_em_rates": report(
            PATHS.question_em_rates("{experiment}"),
            caption="../config/report/question_em_rates.rst",
            category="Experiments",
            subcategory=group_of,
            labels=experiment_labels("EM rate per question"),
        )
    }
    if PLAN.multi_sample
    else {}
)
