import re
import sys
from dataclasses import asdict
from pathlib import Path

from snakemake.utils import validate

from emflow.config import (
    WORKFLOW_SCHEMA,
    check_workflow_config,
    config_source,
    with_defaults,
)
from emflow.data.datasets import mix_id
from emflow.errors import EmflowError
from emflow.generate.job import (
    PLUMBING,
    GenerationSettings,
    check_served_models,
    served_model_name,
)
from emflow.judge.job import SCORE_SETTINGS, JudgeSettings
from emflow.workflow.preflight import check_workflow
from emflow.questions import read_question_sets
from emflow.paths import (
    EXPERIMENT_PATTERN,
    RUN_PATTERN,
    TARGET_PATTERN,
    Layout,
    all_runs,
    base_target,
    experiment_runs,
    model_slug,
    run_target,
    step_target,
    target_run_and_step,
)
from emflow.report.results import report_settings
from emflow.report.summary import experiment_summary_runs
from emflow.workflow.plan import eval_steps, planned_optimizer_steps
from emflow.train.trainer import TrainSettings
from emflow.workflow.jobs import (
    check_dataset_names,
    discover_experiments,
    export_package_path,
    folders_without_config,
    is_dataset_path,
    sorted_params,
)

# emflow's check first: one sentence naming the file and the key (Snakemake's validate prints
# jsonschema's whole dump); then Snakemake's, which fills in the schema's defaults.
try:
    check_workflow_config(
        config,
        config_source(
            workflow.config_settings.configfiles,
            replace_workflow_config=workflow.config_settings.replace_workflow_config,
        ),
    )
except EmflowError as err:
    sys.exit(f"emflow: {err}")
validate(config, schema=str(WORKFLOW_SCHEMA), set_default=True)
# Each stage's settings dataclass holds its defaults (the schema only checks types and ranges).
config["train"] = with_defaults(TrainSettings, config["train"])
config["generation"] = with_defaults(GenerationSettings, config["generation"])
config["judge"] = with_defaults(JudgeSettings, config["judge"])

# Scripts import emflow from this checkout, also inside per-rule conda environments and on
# cluster nodes (each job re-reads this file, so the setting travels with it).
export_package_path(Path(workflow.main_snakefile).parent)

# Every path of this workflow run; see emflow/paths.py for the vocabulary (experiment, run, target).
PATHS = Layout(config["results_dir"], config["experiments_dir"])
SOURCES = config["datasets"]["sources"]
DEMO_MODEL = config.get("demo", {}).get("model")

try:
    EXPERIMENTS = discover_experiments(PATHS.experiments, config["experiments"])
    check_dataset_names(EXPERIMENTS, SOURCES, PATHS.experiments)
    # Whatever the files on disk can tell (model shape, data rows, question files), before any
    # job runs: see emflow/preflight.py. Once, in the Snakemake process that plans the jobs:
    # each job re-reads this file, and checks what it uses itself.
    if workflow.is_main_process:
        for folder in folders_without_config(PATHS.experiments, config["experiments"]):
            print(
                f"emflow: skipping {folder}: it has no config.json, so it is no experiment.",
                file=sys.stderr,
            )
        check_workflow(
            EXPERIMENTS,
            PATHS,
            SOURCES,
            config["generation"]["questions"],
            config["judge"],
            train=config["train"]
            | {"chat_template_kwargs": config["chat_template_kwargs"]},
            mix_seed=config["datasets"]["mix_seed"],
        )
except EmflowError as err:
    sys.exit(f"emflow: {err}")

# Every run to train, as {run: (experiment, training seed)}: one per experiment, or one per seed
# of an experiment with `seeds`.
RUNS = all_runs(EXPERIMENTS)

# Every base model is generated and judged once; each results.md compares against its own.
BASE_MODELS = {model_slug(c.model): c.model for c in EXPERIMENTS.values()}
UPSTREAM = sorted(name for name, source in SOURCES.items() if source == "upstream")
SYNTHETIC = sorted(name for name, source in SOURCES.items() if source == "synthetic")


wildcard_constraints:
    experiment=EXPERIMENT_PATTERN,
    run=RUN_PATTERN,
    target=TARGET_PATTERN,
    dataset=r"[^/]+",
    mix=r"[^/]+",


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
    summary_sweeps,
    sweep_step_generations,


def _sweep_steps():
    """{experiment: the saved steps it evaluates} for experiments with eval_checkpoints."""
    steps = {}
    for name, experiment_config in EXPERIMENTS.items():
        total = planned_optimizer_steps(
            experiment_config,
            training_file(experiment_config),
            config["train"] | {"chat_template_kwargs": config["chat_template_kwargs"]},
        )
        chosen = eval_steps(experiment_config, total, PATHS.config_json(name))
        if chosen:
            steps[name] = chosen
    return steps


def runs_pattern(runs):
    """A wildcard constraint matching exactly these runs (nothing when there are none)."""
    return "|".join(re.escape(run) for run in sorted(runs)) or "(?!)"


def experiment_of(wildcards):
    """The experiment config behind a {run} or {experiment} wildcard."""
    if "run" in wildcards.keys():
        return EXPERIMENTS[RUNS[wildcards.run][0]]
    return EXPERIMENTS[wildcards.experiment]


def gpu_jobs(device):
    """A rule's `gpu` resource: one GPU unless its stage is set to run on the CPU. Run with
    `--resources gpu=<GPUs>` on one machine; each job then holds a GPU of its own (emflow.workflow.gpus).
    """
    return 0 if device == "cpu" else 1


# ---- datasets ---------------------------------------------------------------


def get_archive(wildcards):
    """The encrypted archive when it is there; when not, the rule's script says where to put it,
    and a dry run still shows the whole plan."""
    archive = config["datasets"]["archive"]
    return [archive] if Path(archive).exists() else []


def get_raw_dataset(wildcards):
    source = SOURCES[wildcards.dataset]
    if source in ("upstream", "synthetic"):
        return PATHS.raw_dataset(source, wildcards.dataset)
    return source


def dataset_file(name):
    """A named dataset's prepared file, or the user's own JSONL path as given."""
    return PATHS.prepared_dataset(name) if name in SOURCES else name


def experiment_mix_id(experiment_config):
    return mix_id(experiment_config.datasets, config["datasets"]["mix_seed"])


MIXES = {
    experiment_mix_id(c): dict(sorted(c.datasets.items()))
    for c in EXPERIMENTS.values()
    if c.datasets is not None
}


def get_mix_sources(wildcards):
    return [PATHS.prepared_dataset(name) for name in MIXES[wildcards.mix]]


def training_file(experiment_config):
    """The training JSONL: a prepared dataset, the user's own file, or the shared mix file."""
    if experiment_config.datasets is None:
        name = experiment_config.training_file
        return name if is_dataset_path(name) else dataset_file(name)
    return PATHS.mixed_dataset(experiment_mix_id(experiment_config))


# Checkpoint sweeps: the runs that save adapters along the way (their train job has one more
# output), and each experiment's evaluated steps (each a target: runs/<run>/step-<N>).
try:
    SWEEPS = _sweep_steps()
except EmflowError as err:
    sys.exit(f"emflow: {err}")
SAVING_RUNS = {
    run
    for run, (experiment, _) in RUNS.items()
    if EXPERIMENTS[experiment].adapter_checkpoints is not None
}


def _generation_targets():
    """Every target to generate, as {target: (base model, the run it asks the openai backend
    for: None for the base model, "<run>/step-<N>" for a sweep's step)}."""
    targets = {base_target(m): (m, None) for m in BASE_MODELS.values()}
    for run, (experiment, _) in RUNS.items():
        model = EXPERIMENTS[experiment].model
        targets[run_target(run)] = (model, run)
        for step in SWEEPS.get(experiment, []):
            targets[step_target(run, step)] = (model, f"{run}/step-{step}")
    return targets


# With the openai backend, no two targets may ask the endpoint for the same served model.
GENERATION_TARGETS = _generation_targets()
try:
    check_served_models(
        GenerationSettings.from_config(config["generation"]), GENERATION_TARGETS
    )
except EmflowError as err:
    sys.exit(f"emflow: {err}")


# generation.sweep_in_one_job: a run's sweep is generated by one job (rule generate_sweep).
SWEEP_IN_ONE_JOB = config["generation"].get("sweep_in_one_job", False)
GENERATED_ONE_BY_ONE = (
    rf"base/[^/]+|runs/{RUN_PATTERN}" if SWEEP_IN_ONE_JOB else TARGET_PATTERN
)


# ---- train ------------------------------------------------------------------


def model_inputs(model):
    """The demo's tiny model is built by the workflow; hub models are fetched by transformers."""
    return [DEMO_MODEL] if DEMO_MODEL and model == DEMO_MODEL else []


def get_train_inputs(wildcards):
    experiment_config = experiment_of(wildcards)
    inputs = {
        "train": training_file(experiment_config),
        "model": model_inputs(experiment_config.model),
    }
    if experiment_config.test_file:
        inputs["test"] = dataset_file(experiment_config.test_file)
    return inputs


def train_params(wildcards):
    experiment, seed = RUNS[wildcards.run]
    settings = {k: v for k, v in config["train"].items() if k != "threads"}
    return sorted_params(
        {
            "experiment": EXPERIMENTS[experiment].for_seed(seed).training_params(),
            "settings": settings
            | {"chat_template_kwargs": config["chat_template_kwargs"]},
        }
    )


# ---- generate and judge -----------------------------------------------------


def target_model(target):
    """The base model id behind a target ("base/<slug>", "runs/<run>[/step-<N>]")."""
    if target.startswith("base/"):
        return BASE_MODELS[target.removeprefix("base/")]
    run, _ = target_run_and_step(target)
    return EXPERIMENTS[RUNS[run][0]].model


def get_generate_inputs(wildcards):
    inputs = {
        "model": model_inputs(target_model(wildcards.target)),
        "questions": [q["path"] for q in config["generation"]["questions"]],
    }
    run, step = target_run_and_step(wildcards.target)
    if step is not None:
        inputs["adapter"] = PATHS.step_adapters(run)  # the job picks step-<N> inside
    elif run is not None:
        inputs["adapter"] = PATHS.adapter(run)
    return inputs


def generation_params(wildcards):
    return target_generation_params(wildcards.target)


def target_generation_params(target):
    """What decides a target's answers; the settings in PLUMBING (cache, concurrency, retries,
    timeout) change only how they are fetched, so they rerun nothing. With the openai backend
    the served model's name decides them, in place of the settings that name it."""
    openai = config["generation"]["backend"] == "openai"
    naming = ("openai_base_model",) + (("openai_model",) if openai else ())
    settings = {
        k: v
        for k, v in config["generation"].items()
        if k not in PLUMBING
        and k not in naming
        and k not in ("sweep_samples", "sweep_in_one_job")
    }
    run, step = target_run_and_step(target)
    params = {
        "model": target_model(target),
        "run": run,
        "settings": settings | {"chat_template_kwargs": config["chat_template_kwargs"]},
    }
    if openai:
        model, served_run = GENERATION_TARGETS[target]
        params["served_model"] = served_model_name(
            GenerationSettings.from_config(config["generation"]), model, served_run
        )
    if step is not None:
        # A sweep's checkpoint: which saved step, and the sweep's own sample count if set.
        params |= {"step": step, "samples": config["generation"].get("sweep_samples")}
    return sorted_params(params)


def get_generate_sweep_inputs(wildcards):
    experiment_config = EXPERIMENTS[RUNS[wildcards.run][0]]
    return {
        "model": model_inputs(experiment_config.model),
        "questions": [q["path"] for q in config["generation"]["questions"]],
        "adapter": PATHS.step_adapters(wildcards.run),
    }


def generate_sweep_params(wildcards):
    """generation_params of each step target, and the steps (one list for the run)."""
    steps = SWEEPS[RUNS[wildcards.run][0]]
    per_step = [target_generation_params(step_target(wildcards.run, s)) for s in steps]
    params = {k: v for k, v in per_step[0].items() if k not in ("step", "served_model")}
    if "served_model" in per_step[0]:
        params["served_models"] = [p["served_model"] for p in per_step]
    return sorted_params(params | {"steps": steps})


def judge_params(wildcards):
    """What determines a judge's scores (SCORE_SETTINGS); the rest of config["judge"] (endpoint,
    concurrency, retries, timeout, prices, cache) only changes how they are fetched or priced, so
    it reruns nothing."""
    return sorted_params({k: config["judge"][k] for k in SCORE_SETTINGS})


# The metrics every answer is scored for: judge.metrics, else every judge.prompts template.
JUDGE_METRICS = config["judge"].get("metrics") or list(config["judge"]["prompts"])


def get_judge_inputs(wildcards):
    inputs = {
        "generations": PATHS.generations(wildcards.target),
        # A YAML question set's own judge prompts are read from the set itself.
        "questions": [q["path"] for q in config["generation"]["questions"]],
    }
    prompts = config["judge"]["prompts"]
    inputs.update({m: prompts[m] for m in JUDGE_METRICS if m in prompts})
    if config["judge"]["backend"] == "hf":
        inputs["judge_model"] = model_inputs(config["judge"]["model"])
    return inputs


# ---- results and summary ----------------------------------------------------


# The report settings, and which question sets are the homework's (their rows make the
# seed-format blocks and the verdict).
REPORT = report_settings(config)


def group_of(wildcards):
    """The group of an {experiment}: the Snakemake report files its outputs under it."""
    return wildcards.experiment.split("/")[0]


def experiment_labels(shows):
    """The report's labels for a file of an {experiment} that `shows` something."""
    return lambda wildcards: {
        "experiment": wildcards.experiment.split("/")[1],
        "shows": shows,
    }


# Whether some question is answered several times: results then draw each question's EM rate.
MULTI_SAMPLE = any(
    q.samples > 1
    for q in read_question_sets(
        config["generation"]["questions"],
        samples_per_question=config["generation"]["samples_per_question"],
    )
)
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
    if MULTI_SAMPLE
    else {}
)


def run_targets(experiment):
    """The targets of one experiment's runs, in the order of its training seeds."""
    runs = experiment_runs(experiment, EXPERIMENTS[experiment])
    return [run_target(run) for run in runs.values()]


def get_curves_inputs(wildcards):
    runs = experiment_runs(wildcards.experiment, EXPERIMENTS[wildcards.experiment])
    return [PATHS.log_history(run) for run in runs.values()]


def get_results_inputs(wildcards):
    base = base_target(EXPERIMENTS[wildcards.experiment].model)
    targets = run_targets(wildcards.experiment)
    inputs = {
        "base_judged": PATHS.judged(base),
        "base_usage": PATHS.judge_usage(base),
        "finetuned_judged": [PATHS.judged(t) for t in targets],
        "finetuned_usage": [PATHS.judge_usage(t) for t in targets],
    }
    if wildcards.experiment in SWEEPS:
        inputs["sweep"] = PATHS.sweep(wildcards.experiment, ".csv")
    return inputs


def reported_results():
    """{experiment: its reported_results.md}, for the experiments that have one."""
    paths = {e: PATHS.reported_results(e) for e in EXPERIMENTS}
    return {e: path for e, path in paths.items() if Path(path).exists()}


# The summary's runs (judged CSVs, base models, log histories): the summary rule's inputs are
# exactly the files these name.
SUMMARY_RUNS = experiment_summary_runs(EXPERIMENTS, PATHS)


def get_summary_inputs(wildcards):
    return {
        "results": [PATHS.results_md(e) for e in EXPERIMENTS],
        "runs": [path for run in SUMMARY_RUNS for path in run.files()],
        "base": sorted({r.base_judged for r in SUMMARY_RUNS}),
        "reported": list(reported_results().values()),
    }


def get_sweep_inputs(wildcards):
    experiment = wildcards.experiment
    runs = experiment_runs(experiment, EXPERIMENTS[experiment])
    return {
        "base_judged": PATHS.judged(base_target(EXPERIMENTS[experiment].model)),
        "judged": [point["judged"] for point in sweep_points(experiment)],
        "step_adapters": [PATHS.step_adapters(r) for r in runs.values()],
        "log_histories": [PATHS.log_history(r) for r in runs.values()],
    }


def sweep_points(experiment):
    """The sweep's points as plain dicts (emflow.sweeps.SweepPoint), seed by seed."""
    runs = experiment_runs(experiment, EXPERIMENTS[experiment])
    return [
        {
            "seed": seed,
            "step": step,
            "judged": PATHS.judged(step_target(run, step)),
            "step_adapter": f"{PATHS.step_adapters(run)}/step-{step}",
            "log_history": PATHS.log_history(run),
        }
        for seed, run in runs.items()
        for step in SWEEPS[experiment]
    ]


def get_final_outputs():
    return (
        [PATHS.results_md(e) for e in EXPERIMENTS]
        + [PATHS.training_curves(e) for e in EXPERIMENTS]
        + [PATHS.sweep(e) for e in SWEEPS]
        + [PATHS.summary(suffix) for suffix in (".md", ".csv", ".png")]
        + ([PATHS.summary("_sweeps.png")] if SWEEPS else [])
    )
