import re
import sys
from pathlib import Path

from snakemake.utils import validate

from emflow.data import mix_id
from emflow.errors import EmflowError
from emflow.workflow import (
    check_dataset_names,
    discover_experiments,
    experiment_replicates,
    export_package_path,
    is_dataset_path,
    model_slug,
    replicates,
    sorted_params,
    summary_runs,
)

validate(config, schema="../config/schema/config.schema.yaml", set_default=True)

# Scripts import emflow from this checkout, also inside per-rule conda environments and on
# cluster nodes (each job re-reads this file, so the setting travels with it).
export_package_path(Path(workflow.main_snakefile).parent)

RESULTS = config["results_dir"]
EXPERIMENTS_DIR = config["experiments_dir"]
SOURCES = config["datasets"]["sources"]
DEMO_MODEL = config.get("demo", {}).get("model")

try:
    EXPERIMENTS = discover_experiments(EXPERIMENTS_DIR, config["experiments"])
    check_dataset_names(EXPERIMENTS, SOURCES, EXPERIMENTS_DIR)
except EmflowError as err:
    sys.exit(f"emflow: {err}")

# Every run to train: {run folder: (experiment, training seed)}. An experiment with `seeds` has
# one run per seed, runs/<group>/<run>/seed<N>; any other is one run, runs/<group>/<run>.
REPLICATES = replicates(EXPERIMENTS)
REPLICATED = sorted(name for name, c in EXPERIMENTS.items() if c.seeds is not None)

# Every base model is generated and judged once; each results.md compares against its own.
BASE_MODELS = {model_slug(c.model): c.model for c in EXPERIMENTS.values()}
UPSTREAM = sorted(name for name, source in SOURCES.items() if source == "upstream")
SYNTHETIC = sorted(name for name, source in SOURCES.items() if source == "synthetic")


def one_of(names):
    """A regex matching exactly these names (and nothing when there are none)."""
    return "|".join(re.escape(name) for name in names) or "(?!)"


# Run folders and replicated experiments are spelled out, so that an experiment's own
# training_curves.png (train, or the overlay of its seeds) has exactly one rule making it.
wildcard_constraints:
    group=r"[^/]+",
    run=r"[^/]+",
    dataset=r"[^/]+",
    mix=r"[^/]+",
    slug=r"[^/]+",
    replicate=one_of(REPLICATES),
    replicated=one_of(REPLICATED),
    target=rf"base/[^/]+|runs/(?:{one_of(REPLICATES)})",


localrules:
    all,
    seed_curves,
    decrypt_datasets,
    synthetic_datasets,
    build_demo_model,
    prepare_dataset,
    mix_dataset,
    report,
    summary,


# ---- datasets ---------------------------------------------------------------


def get_archive(wildcards):
    """The encrypted archive when it is there; when not, the rule's script says where to put it,
    and a dry run still shows the whole plan."""
    archive = config["datasets"]["archive"]
    return [archive] if Path(archive).exists() else []


def get_raw_dataset(wildcards):
    source = SOURCES[wildcards.dataset]
    if source in ("upstream", "synthetic"):
        return f"{RESULTS}/datasets/{source}/{wildcards.dataset}.jsonl"
    return source


def prepared(name):
    return f"{RESULTS}/datasets/prepared/{name}.jsonl"


def get_mix_sources(wildcards):
    return [prepared(name) for name in MIXES[wildcards.mix]]


def training_file(experiment):
    """The training JSONL: a prepared dataset, the user's own file, or the shared mix file."""
    config_ = EXPERIMENTS[experiment]
    if config_.datasets is None:
        name = config_.training_file
        return name if is_dataset_path(name) and name not in SOURCES else prepared(name)
    return f"{RESULTS}/datasets/mixed/{experiment_mix_id(config_)}.jsonl"


def experiment_mix_id(config_):
    return mix_id(config_.datasets, config["datasets"]["mix_seed"])


MIXES = {
    experiment_mix_id(c): dict(sorted(c.datasets.items()))
    for c in EXPERIMENTS.values()
    if c.datasets is not None
}


# ---- train ------------------------------------------------------------------


def model_inputs(model):
    """The demo's tiny model is built by the workflow; hub models are fetched by transformers."""
    return [DEMO_MODEL] if DEMO_MODEL and model == DEMO_MODEL else []


def get_train_inputs(wildcards):
    experiment = REPLICATES[wildcards.replicate][0]
    config_ = EXPERIMENTS[experiment]
    inputs = {"train": training_file(experiment), "model": model_inputs(config_.model)}
    if config_.test_file:
        test = config_.test_file
        inputs["test"] = prepared(test) if test in SOURCES else test
    return inputs


def train_params(wildcards):
    experiment, seed = REPLICATES[wildcards.replicate]
    config_ = EXPERIMENTS[experiment].for_seed(seed)
    settings = {k: v for k, v in config["train"].items() if k != "threads"}
    return sorted_params(
        {
            "experiment": config_.training_params(),
            "settings": settings
            | {"chat_template_kwargs": config["chat_template_kwargs"]},
        }
    )


# ---- generate and judge -----------------------------------------------------


def target_model(target):
    """The base model id behind a target ("base/<slug>" or "runs/<run folder>")."""
    if target.startswith("base/"):
        return BASE_MODELS[target.removeprefix("base/")]
    return EXPERIMENTS[REPLICATES[target.removeprefix("runs/")][0]].model


def get_generate_inputs(wildcards):
    inputs = {"model": model_inputs(target_model(wildcards.target))}
    if wildcards.target.startswith("runs/"):
        inputs["adapter"] = f"{RESULTS}/{wildcards.target}/adapter"
    return inputs


def generation_params(wildcards):
    settings = {k: v for k, v in config["generation"].items() if k != "threads"}
    return sorted_params(
        {
            "model": target_model(wildcards.target),
            "settings": settings
            | {"chat_template_kwargs": config["chat_template_kwargs"]},
        }
    )


# What determines a judge's scores; the rest of config["judge"] (endpoint, concurrency, retries,
# timeout, prices, cache) only changes how they are fetched or priced, so it reruns nothing.
JUDGE_RESULT_KEYS = ("backend", "model", "mode", "temperature", "samples")


def judge_params(wildcards):
    return sorted_params({k: config["judge"][k] for k in JUDGE_RESULT_KEYS})


def get_judge_inputs(wildcards):
    inputs = {"generations": f"{RESULTS}/{wildcards.target}/generations.csv"}
    inputs.update(config["judge"]["prompts"])
    if config["judge"]["backend"] == "hf":
        inputs["judge_model"] = model_inputs(config["judge"]["model"])
    return inputs


# ---- report -----------------------------------------------------------------


def base_target(experiment):
    return f"base/{model_slug(EXPERIMENTS[experiment].model)}"


def run_folders(experiment):
    """The run folders of one experiment, one per training seed."""
    return list(experiment_replicates(experiment, EXPERIMENTS[experiment]).values())


def get_report_inputs(wildcards):
    experiment = f"{wildcards.group}/{wildcards.run}"
    folders = run_folders(experiment)
    return {
        "base": f"{RESULTS}/{base_target(experiment)}/judged.csv",
        "base_usage": f"{RESULTS}/{base_target(experiment)}/judge_usage.json",
        "finetuned": [f"{RESULTS}/runs/{f}/judged.csv" for f in folders],
        "finetuned_usage": [f"{RESULTS}/runs/{f}/judge_usage.json" for f in folders],
    }


def report_seeds(wildcards):
    """The training seeds of an experiment with replicates; None for a single run."""
    return EXPERIMENTS[f"{wildcards.group}/{wildcards.run}"].seeds


def get_seed_log_histories(wildcards):
    return [
        f"{RESULTS}/runs/{f}/log_history.json"
        for f in run_folders(wildcards.replicated)
    ]


def report_params(wildcards):
    return sorted_params(config["report"])


def results_md(experiment):
    return f"{EXPERIMENTS_DIR}/{experiment}/results.md"


def reported_results(experiment):
    """The seed's own published results.md, kept beside the config as reported_results.md."""
    path = Path(EXPERIMENTS_DIR) / experiment / "reported_results.md"
    return str(path) if path.exists() else None


# The summary's runs, as emflow.report.write_summary takes them, and their log histories.
SUMMARY_RUNS, SUMMARY_HISTORIES = summary_runs(EXPERIMENTS, RESULTS, EXPERIMENTS_DIR)


def get_summary_inputs(wildcards):
    return {
        "results": [results_md(e) for e in EXPERIMENTS],
        "finetuned": [f"{RESULTS}/runs/{f}/judged.csv" for f in REPLICATES],
        "base": sorted({f"{RESULTS}/{base_target(e)}/judged.csv" for e in EXPERIMENTS}),
        "log_history": [f"{RESULTS}/runs/{f}/log_history.json" for f in REPLICATES],
    }


def get_final_outputs():
    return (
        [results_md(e) for e in EXPERIMENTS]
        + [f"{EXPERIMENTS_DIR}/{e}/training_curves.png" for e in EXPERIMENTS]
        + [f"{RESULTS}/summary.md", f"{RESULTS}/summary.csv", f"{RESULTS}/summary.png"]
    )
