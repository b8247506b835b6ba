"""The workflow's plan: which jobs a workflow config asks for, and what decides each one.

rules/common.smk builds one `Plan` when Snakemake reads the workflow and binds each rule's
inputs and params to its methods. The plan knows the experiments, their runs (one per training
seed), the base models, the dataset mixes, the checkpoint sweeps (which saved steps become
targets) and every target to generate and judge. Its methods take plain names (a run, a target,
an experiment; see emflow.paths for the words), so pytest reaches all of it without Snakemake.

A rule's params are what decide its outputs: a changed value reruns the job. Each carries only
the keys its stage reads, sorted at every level (emflow.workflow.jobs.sorted_params), and never
a plumbing setting (cache, concurrency, threads ...), so reordering a file or raising the
concurrency reruns nothing.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from emflow.capabilities.settings import capability_settings
from emflow.config import ExperimentConfig
from emflow.data.datasets import mix_id
from emflow.generate.settings import (
    PLUMBING,
    GenerationSettings,
    check_lora_scales,
    check_served_models,
    served_model_name,
)
from emflow.judge.settings import (
    SCORE_SETTINGS,
    JudgeSettings,
    judged_metrics,
    panel_prompt_files,
    panel_settings,
)
from emflow.paths import (
    RUN_PATTERN,
    TARGET_PATTERN,
    Layout,
    all_runs,
    base_target,
    experiment_runs,
    model_slug,
    run_target,
    scale_target,
    step_target,
    target_run_and_step,
    target_scale,
)
from emflow.questions import read_question_sets
from emflow.report.settings import report_settings
from emflow.report.summary import experiment_summary_runs
from emflow.train.settings import TrainSettings
from emflow.workflow.capability_plan import capability_targets, experiment_capabilities
from emflow.workflow.jobs import (
    check_dataset_names,
    discover_experiments,
    folders_without_config,
    is_dataset_path,
    sorted_params,
)
from emflow.workflow.preflight import check_workflow
from emflow.workflow.sweep_steps import eval_steps, planned_optimizer_steps
from emflow.workflow_config import plumbing_fields, with_defaults


def fill_stage_defaults(config: dict[str, Any]) -> None:
    """Fill each stage's defaults into its section of the workflow config, in place (the rules
    read the config too): the settings dataclasses hold the defaults, the schema only checks
    types and ranges, and a key given at its default value then reruns nothing."""
    config["train"] = with_defaults(TrainSettings, config["train"])
    config["generation"] = with_defaults(GenerationSettings, config["generation"])
    config["judge"] = with_defaults(JudgeSettings, config["judge"])


def runs_pattern(runs: Iterable[str]) -> str:
    """A wildcard constraint matching exactly these runs (nothing when there are none)."""
    return "|".join(re.escape(run) for run in sorted(runs)) or "(?!)"


def gpu_jobs(device: str) -> int:
    """A rule's `gpu` resource: one GPU unless its stage is set to run on the CPU. Run with
    `--resources gpu=<GPUs>` on one machine; each job then holds a GPU of its own
    (emflow.workflow.gpus)."""
    return 0 if device == "cpu" else 1


class Plan:
    """Every job of one workflow config (validated, with each stage's defaults filled in)."""

    def __init__(self, config: Mapping[str, Any], experiments: Mapping[str, ExperimentConfig]):
        self.config = config
        # Every path of this workflow run (emflow.paths).
        self.paths = Layout(config["results_dir"], config["experiments_dir"])
        self.sources: dict[str, str] = config["datasets"]["sources"]
        self.demo_model: str | None = config.get("demo", {}).get("model")
        self.experiments = dict(experiments)
        # Every run to train, as {run: (experiment, training seed)}: one per experiment, or one
        # per seed of an experiment with `seeds`.
        self.runs = all_runs(self.experiments)
        # Every base model is generated and judged once; each results.md compares against its own.
        self.base_models = {model_slug(c.model): c.model for c in self.experiments.values()}
        self.upstream = sorted(n for n, source in self.sources.items() if source == "upstream")
        self.synthetic = sorted(n for n, source in self.sources.items() if source == "synthetic")
        # {mix id: {dataset: rows}}: every experiment that declares the same mix shares one file.
        self.mixes = {
            self.mix_id(c): dict(sorted(c.datasets.items()))
            for c in self.experiments.values()
            if c.datasets is not None
        }
        # Checkpoint sweeps: each experiment's evaluated steps (each a target:
        # runs/<run>/step-<N>), and the runs that save adapters along the way (their train job
        # has one more output).
        self.sweeps = self._sweep_steps()
        self.saving_runs = {
            run
            for run, (experiment, _) in self.runs.items()
            if self.experiments[experiment].adapter_checkpoints is not None
        }
        # Dose-response: each experiment's eval_lora_scales, a target per run and scale
        # (runs/<run>/scale-<s>), each its own generate job so a new scale schedules only itself.
        self.doses = {n: c.eval_lora_scales for n, c in experiments.items() if c.eval_lora_scales}
        self.dose_runs = {run for run, (e, _) in self.runs.items() if e in self.doses}
        # With the openai backend, no two targets may ask the endpoint for the same model.
        self.generation = GenerationSettings.from_config(config["generation"])
        check_lora_scales(self.generation, [self.paths.config_json(e) for e in self.doses])
        self.generation_targets = self._generation_targets()
        check_served_models(self.generation, self.generation_targets)
        # generation.sweep_in_one_job: a run's sweep is generated by one job (generate_sweep).
        self.sweep_in_one_job: bool = config["generation"].get("sweep_in_one_job", False)
        # The metrics every answer is scored for: judge.metrics, else every judge.prompts file.
        self.judge_metrics: list[str] = judged_metrics(config["judge"])
        # judge.panel: {name: settings} of each extra judge, scoring every target beside the
        # primary (judged.<name>.csv); empty without a panel, which then plans as before.
        self.panel: dict[str, JudgeSettings] = panel_settings(config["judge"])
        # The report settings, and which question sets are the homework's (their rows make the
        # seed-format blocks and the verdict).
        self.report = report_settings(config)
        # Whether some question is answered several times: results then draw each question's
        # EM rate.
        self.multi_sample = any(
            q.samples > 1
            for q in read_question_sets(
                config["generation"]["questions"],
                samples_per_question=config["generation"]["samples_per_question"],
            )
        )
        # lm-evaluation-harness on the targets (the capabilities stage); None: off. Its tasks are
        # checked once, by the Snakefile, in the process that plans the jobs.
        self.capabilities = capability_settings(
            config.get("capabilities"), source="capabilities", check_tasks=False
        )
        # The summary's runs (judged CSVs, base models, log histories): the summary rule's
        # inputs are exactly the files these name.
        self.summary_runs = experiment_summary_runs(self.experiments, self.paths)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, preflight: bool = False) -> Plan:
        """The plan of the experiments `config` picks. With `preflight`, first whatever the
        files on disk can tell (model shape, data rows, question files; emflow.workflow.
        preflight), with a warning on stderr for each matched folder without a config.json."""
        paths = Layout(config["results_dir"], config["experiments_dir"])
        sources = config["datasets"]["sources"]
        experiments = discover_experiments(paths.experiments, config["experiments"])
        check_dataset_names(experiments, sources, paths.experiments)
        if preflight:
            for folder in folders_without_config(paths.experiments, config["experiments"]):
                print(
                    f"emflow: skipping {folder}: it has no config.json, so it is no experiment.",
                    file=sys.stderr,
                )
            check_workflow(
                experiments,
                paths,
                sources,
                config["generation"]["questions"],
                config["judge"],
                train=_train_section(config),
                mix_seed=config["datasets"]["mix_seed"],
            )
        return cls(config, experiments)

    # ---- runs, models and data -----------------------------------------------------------

    def experiment_of_run(self, run: str) -> ExperimentConfig:
        return self.experiments[self.runs[run][0]]

    def target_model(self, target: str) -> str:
        """The base model id behind a target ("base/<slug>", "runs/<run>[/step-<N>]")."""
        if target.startswith("base/"):
            return self.base_models[target.removeprefix("base/")]
        run, _ = target_run_and_step(target)
        return self.experiment_of_run(run).model

    def model_inputs(self, model: str) -> list[str]:
        """The demo's tiny model is built by the workflow; hub models are fetched by
        transformers."""
        return [self.demo_model] if self.demo_model and model == self.demo_model else []

    def archive_inputs(self) -> list[str]:
        """The encrypted archive when it is there; when not, the rule's script says where to
        put it, and a dry run still shows the whole plan."""
        archive = self.config["datasets"]["archive"]
        return [archive] if Path(archive).exists() else []

    def raw_dataset(self, dataset: str) -> str:
        source = self.sources[dataset]
        if source in ("upstream", "synthetic"):
            return self.paths.raw_dataset(source, dataset)
        return source

    def dataset_file(self, name: str) -> str:
        """A named dataset's prepared file, or the user's own JSONL path as given."""
        return self.paths.prepared_dataset(name) if name in self.sources else name

    def mix_id(self, experiment: ExperimentConfig) -> str:
        return mix_id(experiment.datasets, self.config["datasets"]["mix_seed"])

    def mix_sources(self, mix: str) -> list[str]:
        return [self.paths.prepared_dataset(name) for name in self.mixes[mix]]

    def training_file(self, experiment: ExperimentConfig) -> str:
        """The training JSONL: a prepared dataset, the user's own file, or the shared mix."""
        if experiment.datasets is None:
            name = experiment.training_file
            return name if is_dataset_path(name) else self.dataset_file(name)
        return self.paths.mixed_dataset(self.mix_id(experiment))

    def question_files(self) -> list[str]:
        return [q["path"] for q in self.config["generation"]["questions"]]

    # ---- train --------------------------------------------------------------------------

    def train_inputs(self, run: str) -> dict[str, Any]:
        experiment = self.experiment_of_run(run)
        inputs = {
            "train": self.training_file(experiment),
            "model": self.model_inputs(experiment.model),
        }
        if experiment.test_file:
            inputs["test"] = self.dataset_file(experiment.test_file)
        if experiment.kl_regularization and experiment.kl_dataset_file:
            inputs["kl"] = self.dataset_file(experiment.kl_dataset_file)
        return inputs

    def train_params(self, run: str) -> dict[str, Any]:
        """The run's experiment keys (for its seed) and the train settings but the plumbing."""
        experiment, seed = self.runs[run]
        plumbing = plumbing_fields(TrainSettings)
        settings = {k: v for k, v in self.config["train"].items() if k not in plumbing}
        return sorted_params(
            {
                "experiment": self.experiments[experiment].for_seed(seed).training_params(),
                "settings": settings
                | {"chat_template_kwargs": self.config["chat_template_kwargs"]},
            }
        )

    # ---- generate and judge -------------------------------------------------------------

    @property
    def generated_one_by_one(self) -> str:
        """The targets the generate rule makes: every one, or with sweep_in_one_job all but
        the sweeps' steps (rule generate_sweep makes those)."""
        return rf"base/[^/]+|runs/{RUN_PATTERN}" if self.sweep_in_one_job else TARGET_PATTERN

    def generate_inputs(self, target: str) -> dict[str, Any]:
        inputs: dict[str, Any] = {
            "model": self.model_inputs(self.target_model(target)),
            "questions": self.question_files(),
        }
        run, step = target_run_and_step(target)
        if step is not None:
            inputs["adapter"] = self.paths.step_adapters(run)  # the job picks step-<N> inside
        elif run is not None:
            inputs["adapter"] = self.paths.adapter(run)
        return inputs

    def generation_params(self, target: str) -> dict[str, Any]:
        """What decides a target's answers; the settings in PLUMBING (cache, concurrency,
        retries, timeout) change only how they are fetched, so they rerun nothing. With the
        openai backend the served model's name decides them, in place of the settings that
        name it."""
        section = self.config["generation"]
        openai = section["backend"] == "openai"
        naming = ("openai_base_model",) + (("openai_model",) if openai else ())
        settings = {
            k: v
            for k, v in section.items()
            if k not in PLUMBING
            and k not in naming
            and k not in ("sweep_samples", "sweep_in_one_job")
        }
        run, step = target_run_and_step(target)
        params = {
            "model": self.target_model(target),
            "run": run,
            "settings": settings | {"chat_template_kwargs": self.config["chat_template_kwargs"]},
        }
        if openai:
            model, served_run = self.generation_targets[target]
            params["served_model"] = served_model_name(self.generation, model, served_run)
        if step is not None:
            # A sweep's checkpoint: which saved step, and the sweep's own sample count if set.
            params |= {"step": step, "samples": section.get("sweep_samples")}
        if (scaled := target_scale(target)) is not None:
            params["lora_scale"] = scaled[1]  # only on dose targets: other params stay as they were
        params["settings"] |= self._training_prompt_settings(run, section["questions"])
        return sorted_params(params)

    def _training_prompt_settings(self, run: str | None, specs: list[dict]) -> dict[str, Any]:
        """A question set's `training_prompt: true` for a target: the run's training instruction
        (emflow.questions.with_training_prompt applies it) when the run has one and some set asks
        for it; else the sets without the key, so that the base model and runs trained without
        an instruction keep the params they had before the option was set (no rerun)."""
        spec = self.experiment_of_run(run).inoculation_spec if run is not None else None
        if spec is not None and any(q.get("training_prompt") for q in specs):
            return {"training_prompt": {"prompt": spec.prompt, "placement": spec.placement}}
        return {
            "questions": [{k: v for k, v in q.items() if k != "training_prompt"} for q in specs]
        }

    def generate_sweep_inputs(self, run: str) -> dict[str, Any]:
        return {
            "model": self.model_inputs(self.experiment_of_run(run).model),
            "questions": self.question_files(),
            "adapter": self.paths.step_adapters(run),
        }

    def generate_doses_params(self, run: str) -> dict[str, Any]:
        """generation.sweep_in_one_job: the run's generation_params and its scales, for the one
        job that answers at every scale (rule generate_doses; its inputs: the run's)."""
        scales = self.doses[self.runs[run][0]]
        return sorted_params(self.generation_params(run_target(run)) | {"scales": scales})

    def generate_sweep_params(self, run: str) -> dict[str, Any]:
        """generation_params of each step target, and the steps (one list for the run)."""
        steps = self.sweeps[self.runs[run][0]]
        per_step = [self.generation_params(step_target(run, s)) for s in steps]
        params = {k: v for k, v in per_step[0].items() if k not in ("step", "served_model")}
        if "served_model" in per_step[0]:
            params["served_models"] = [p["served_model"] for p in per_step]
        return sorted_params(params | {"steps": steps})

    def judge_params(self) -> dict[str, Any]:
        """What determines a judge's scores (SCORE_SETTINGS); the rest of the judge section
        (endpoint, concurrency, retries, timeout, prices, cache) only changes how they are
        fetched or priced, so it reruns nothing."""
        return sorted_params({k: self.config["judge"][k] for k in SCORE_SETTINGS})

    def panel_judge_params(self, name: str) -> dict[str, Any]:
        """judge_params of panel judge `name`: only its own score settings, so that changing
        one panel judge re-judges with that judge alone."""
        settings = self.panel[name]
        return sorted_params({k: getattr(settings, k) for k in SCORE_SETTINGS})

    def panel_judge_inputs(self, target: str, name: str) -> dict[str, Any]:
        """judge_inputs, with panel judge `name`'s model when it is a local (hf) one, and its
        own prompt files where it has some (editing one re-judges with that judge alone)."""
        settings = self.panel[name]
        inputs = self.judge_inputs(target, judge_model=False)
        prompts = panel_prompt_files(self.config["judge"], name)
        inputs.update({m: prompts[m] for m in self.judge_metrics if m in prompts})
        if settings.backend == "hf":
            inputs["judge_model"] = self.model_inputs(settings.model)
        return inputs

    def judge_inputs(self, target: str, *, judge_model: bool = True) -> dict[str, Any]:
        judge = self.config["judge"]
        inputs: dict[str, Any] = {
            "generations": self.paths.generations(target),
            # A YAML question set's own judge prompts are read from the set itself.
            "questions": self.question_files(),
        }
        inputs.update({m: judge["prompts"][m] for m in self.judge_metrics if m in judge["prompts"]})
        if judge_model and judge["backend"] == "hf":
            inputs["judge_model"] = self.model_inputs(judge["model"])
        return inputs

    # ---- results, sweeps and summary ----------------------------------------------------

    def experiment_runs(self, experiment: str) -> dict[int, str]:
        """{training seed: run} of one experiment, in the order of its seeds."""
        return experiment_runs(experiment, self.experiments[experiment])

    def curves_inputs(self, experiment: str) -> list[str]:
        return [self.paths.log_history(run) for run in self.experiment_runs(experiment).values()]

    def results_inputs(self, experiment: str) -> dict[str, Any]:
        base = base_target(self.experiments[experiment].model)
        targets = [run_target(run) for run in self.experiment_runs(experiment).values()]
        inputs: dict[str, Any] = {
            "base_judged": self.paths.judged(base),
            "base_usage": self.paths.judge_usage(base),
            "finetuned_judged": [self.paths.judged(t) for t in targets],
            "finetuned_usage": [self.paths.judge_usage(t) for t in targets],
        }
        # results.md says when a run stopped early (emflow.train.early_stop): the paper's
        # low-loss stop is on for every run. (Added with that stop: results reran once.)
        inputs["log_history"] = self.curves_inputs(experiment)
        if experiment in self.sweeps:
            inputs["sweep"] = self.paths.sweep(experiment, ".csv")
        if experiment in self.doses:
            inputs["dose"] = self.paths.dose(experiment, ".csv")
        if self.capabilities:
            # Only with the stage on: a config without it keeps its inputs, and reruns nothing.
            capabilities = experiment_capabilities(self, experiment)
            inputs["capabilities_base"] = capabilities["base"]
            inputs["capabilities"] = capabilities["finetuned"]
        labels = self.paths.human_labels(experiment)
        if Path(labels).exists():
            # Only where the file is, as reported_results: editing it reruns this results only.
            inputs["human_labels"] = labels
        if self.panel:
            # Only with a panel: a config without one keeps its inputs, and reruns nothing.
            panel = self.panel_results(experiment).values()
            inputs["panel_judged"] = [p for j in panel for p in (j["base"], *j["finetuned"])]
            inputs["panel_usage"] = [
                p for j in panel for p in (j["base_usage"], *j["finetuned_usage"])
            ]
        return inputs

    def panel_results(self, experiment: str) -> dict[str, dict[str, Any]]:
        """{panel judge: {"base": its judged CSV of the base model, "finetuned": each run's,
        in seed order, "base_usage" and "finetuned_usage": the same targets' judge_usage JSON}}:
        the results rule's `panel` (emflow.report.experiment)."""
        base = base_target(self.experiments[experiment].model)
        targets = [run_target(run) for run in self.experiment_runs(experiment).values()]
        return {
            name: {
                "base": self.paths.panel_judged(base, name),
                "finetuned": [self.paths.panel_judged(t, name) for t in targets],
                "base_usage": self.paths.panel_judge_usage(base, name),
                "finetuned_usage": [self.paths.panel_judge_usage(t, name) for t in targets],
            }
            for name in self.panel
        }

    def sweep_points(self, experiment: str) -> list[dict[str, Any]]:
        """The sweep's points as plain dicts (emflow.report.sweeps.SweepPoint), seed by seed."""
        return [
            {
                "seed": seed,
                "step": step,
                "judged": self.paths.judged(step_target(run, step)),
                "step_adapter": f"{self.paths.step_adapters(run)}/step-{step}",
                "log_history": self.paths.log_history(run),
            }
            for seed, run in self.experiment_runs(experiment).items()
            for step in self.sweeps[experiment]
        ]

    def sweep_inputs(self, experiment: str) -> dict[str, Any]:
        runs = self.experiment_runs(experiment).values()
        return {
            "base_judged": self.paths.judged(base_target(self.experiments[experiment].model)),
            "judged": [point["judged"] for point in self.sweep_points(experiment)],
            "step_adapters": [self.paths.step_adapters(r) for r in runs],
            "log_histories": [self.paths.log_history(r) for r in runs],
        }

    def dose_points(self, experiment: str) -> list[dict[str, Any]]:
        """The dose-response points (emflow.report.dose.DosePoint) as plain dicts, seed by seed."""
        runs = self.experiment_runs(experiment).items()
        judged = self.paths.judged
        return [{"seed": seed, "scale": s, "judged": judged(scale_target(run, s))}
                for seed, run in runs for s in self.doses[experiment]]  # fmt: skip

    def reported_results(self) -> dict[str, str]:
        """{experiment: its reported_results.md}, for the experiments that have one."""
        paths = {e: self.paths.reported_results(e) for e in self.experiments}
        return {e: path for e, path in paths.items() if Path(path).exists()}

    def summary_run_params(self) -> list[dict[str, Any]]:
        """The summary's runs (SummaryRun) as plain dicts, for the summary rule's params."""
        # compare_to only where set: a workflow without it keeps the params it had.
        return [
            {k: v for k, v in asdict(run).items() if k != "compare_to" or v is not None}
            for run in self.summary_runs
        ]

    def summary_inputs(self) -> dict[str, Any]:
        inputs: dict[str, Any] = {
            "results": [self.paths.results_md(e) for e in self.experiments],
            "runs": [path for run in self.summary_runs for path in run.files()],
            "base": sorted({r.base_judged for r in self.summary_runs}),
            "reported": list(self.reported_results().values()),
        }
        if self.capabilities:
            files = self.summary_capabilities().values()
            inputs["capabilities"] = sorted(
                {p for f in files for p in (f["base"], *f["finetuned"])}
            )
        if self.panel:
            # Only with a panel: a config without one keeps the summary's inputs.
            inputs["panel_judged"] = sorted(
                {p for j in self.summary_panel().values() for f in j.values()
                 for p in (f["base"], *f["finetuned"])}
            )  # fmt: skip
        return inputs

    def summary_panel(self) -> dict[str, dict[str, dict[str, Any]]]:
        """{experiment: panel_results(experiment)}: the summary rule's `panel` (only with a
        panel; emflow.report.summary_judges)."""
        return {e: self.panel_results(e) for e in self.experiments}

    def final_outputs(self) -> list[str]:
        """What `snakemake` with no target builds (rule all)."""
        paths = self.paths
        return (
            [paths.results_md(e) for e in self.experiments]
            + [paths.answers(e) for e in self.experiments]
            + [paths.training_curves(e) for e in self.experiments]
            + [paths.sweep(e) for e in self.sweeps]
            + [paths.dose(e) for e in self.doses]
            + [paths.summary(suffix) for suffix in (".md", ".csv", ".png", "_answers.html")]
            + ([paths.summary("_sweeps.png")] if self.sweeps else [])
            + ([paths.summary("_judges.png")] if self.panel else [])
            + self.capability_outputs()
        )

    def capability_outputs(self) -> list[str]:
        """Every target's capabilities.json and the summary's EM-vs-capability plot (none
        without the stage)."""
        if not self.capabilities:
            return []
        targets = capability_targets(self, self.capabilities)
        return [self.paths.capabilities(t) for t in targets] + [
            self.paths.summary("_capabilities.png")
        ]

    def summary_capabilities(self) -> dict[str, dict[str, Any]]:
        """{experiment: its base model's and runs' capabilities.json}: the summary rule's
        `capabilities` (only with the stage on)."""
        return {e: experiment_capabilities(self, e) for e in self.experiments}

    # ---- planning helpers ---------------------------------------------------------------

    def _sweep_steps(self) -> dict[str, list[int]]:
        """{experiment: the saved steps it evaluates} for experiments with eval_checkpoints."""
        steps = {}
        for name, experiment in self.experiments.items():
            # Only a run that saves checkpoints has steps to check or evaluate; each job
            # re-reads the Snakefile, so no other experiment's data is read for this.
            if experiment.adapter_checkpoints is None:
                continue
            total = planned_optimizer_steps(
                experiment, self.training_file(experiment), _train_section(self.config)
            )
            chosen = eval_steps(experiment, total, self.paths.config_json(name))
            if chosen:
                steps[name] = chosen
        return steps

    def _generation_targets(self) -> dict[str, tuple[str, str | None]]:
        """Every target to generate, as {target: (base model, the run it asks the openai
        backend for: None for the base model, "<run>/step-<N>" for a sweep's step)}."""
        targets = {base_target(m): (m, None) for m in self.base_models.values()}
        for run, (experiment, _) in self.runs.items():
            model = self.experiments[experiment].model
            targets[run_target(run)] = (model, run)
            for step in self.sweeps.get(experiment, []):
                targets[step_target(run, step)] = (model, f"{run}/step-{step}")
            for scale in self.doses.get(experiment, []):
                targets[scale_target(run, scale)] = (model, run)
        return targets


def _train_section(config: Mapping[str, Any]) -> dict[str, Any]:
    """The train section with chat_template_kwargs, as the train rule's params carry it."""
    return config["train"] | {"chat_template_kwargs": config["chat_template_kwargs"]}
