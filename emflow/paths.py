"""Where every file of a workflow run lives: the one place that spells a path.

The rules build their inputs and outputs from these functions (given wildcard patterns such as
"{run}", they return patterns), and `emflow summary` finds finished runs with the same ones.

Vocabulary:
- an *experiment* is one `config.json`, named `<group>/<name>` after its folder;
- a *run* is one training of an experiment: the experiment's own name, or `<group>/<name>/seed<N>`
  for each training seed of an experiment with `seeds` (replicates);
- a *target* is what gets generated and judged: `runs/<run>`, `base/<model slug>`,
  `runs/<run>/step-<N>`, the adapter a run saved after optimizer step N (a checkpoint sweep), or
  `runs/<run>/scale-<s>`, the run's adapter with its LoRA B matrices times s (`eval_lora_scales`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from emflow.config import ExperimentConfig

# Wildcard constraints for the names above: two folders, and a seed folder for replicates.
EXPERIMENT_PATTERN = r"[^/]+/[^/]+"
RUN_PATTERN = r"[^/]+/[^/]+(?:/seed[0-9]+)?"
# A dose-response scale as a folder name (scale_name): digits, with a fraction when it has one.
SCALE_PATTERN = r"[0-9]+(?:\.[0-9]+)?"
TARGET_PATTERN = rf"base/[^/]+|runs/{RUN_PATTERN}(?:/step-[0-9]+|/scale-{SCALE_PATTERN})?"
# The per-question EM rates figure's name beside results.md (only for multi-sample question sets).
QUESTION_EM_RATES = "question_em_rates.png"


def model_slug(model: str) -> str:
    """A folder name for a model id or path, as the Hugging Face cache names them."""
    return model.strip("./").replace("/", "--")


def run_name(experiment: str, seed: int) -> str:
    """The run of one training seed of an experiment with replicates: `<group>/<name>/seed<N>`."""
    return f"{experiment}/seed{seed}"


def experiment_runs(experiment: str, config: ExperimentConfig) -> dict[int, str]:
    """One experiment's runs as {training seed: run}, in the order of its `seeds`.

    An experiment with `seeds` has one run per seed (`run_name`); any other experiment is one
    run named like the experiment itself, as before replicates existed.
    """
    if config.seeds is None:
        return {config.seed: experiment}
    return {seed: run_name(experiment, seed) for seed in config.seeds}


def all_runs(experiments: dict[str, ExperimentConfig]) -> dict[str, tuple[str, int]]:
    """Every run to train, as {run: (experiment, training seed)}."""
    return {
        run: (name, seed)
        for name, config in experiments.items()
        for seed, run in experiment_runs(name, config).items()
    }


def run_target(run: str) -> str:
    return f"runs/{run}"


def step_target(run: str, step: int) -> str:
    """The target of the adapter `run` saved after optimizer step `step`."""
    return f"runs/{run}/step-{step}"


def target_run_and_step(target: str) -> tuple[str | None, int | None]:
    """(run, step) of a target: (run, None) for a run's final adapter (scaled or not: see
    target_scale), (None, None) for a base model.

    Read by position, not by the word: a run is two folders (three with `seed<N>`), so only a
    part after those is a step, and an experiment may itself be named `step-<N>`.
    """
    if not target.startswith("runs/"):
        return None, None
    run = target.removeprefix("runs/")
    parts = run.split("/")
    step = re.fullmatch(r"step-([0-9]+)", parts[-1])
    if len(parts) >= 3 and step:
        return "/".join(parts[:-1]), int(step.group(1))
    scaled = target_scale(target)
    return (scaled[0] if scaled else run), None


def scale_name(scale: float) -> str:
    """A scale as plain decimal digits, one spelling per number: 1 and 1.0 are "1", 0.5 "0.5"
    (never an exponent, so that the name stays in SCALE_PATTERN)."""
    text = f"{Decimal(repr(float(scale))):f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def scale_target(run: str, scale: float) -> str:
    """The target of `run`'s final adapter with its LoRA B matrices multiplied by `scale`."""
    return f"runs/{run}/scale-{scale_name(scale)}"


def target_scale(target: str) -> tuple[str, float] | None:
    """(run, scale) of a dose-response target, None for any other target; read by position
    like target_run_and_step (an experiment may itself be named `scale-<s>`)."""
    parts = target.split("/")
    scale = re.fullmatch(f"scale-({SCALE_PATTERN})", parts[-1])
    if parts[0] != "runs" or len(parts) < 4 or not scale:
        return None
    return "/".join(parts[1:-1]), float(scale.group(1))


def base_target(model: str) -> str:
    """The base model's target: generated and judged once, whichever experiments share it."""
    return f"base/{model_slug(model)}"


@dataclass(frozen=True)
class Layout:
    """The folders of one workflow config: `results_dir` (heavy, git-ignored artifacts) and
    `experiments_dir` (each experiment's config.json and its small outputs beside it)."""

    results: str
    experiments: str

    # -- beside each experiment's config.json ----------------------------------------------

    def experiment_file(self, experiment: str, name: str) -> str:
        return f"{self.experiments}/{experiment}/{name}"

    def config_json(self, experiment: str) -> str:
        return self.experiment_file(experiment, "config.json")

    def results_md(self, experiment: str) -> str:
        return self.experiment_file(experiment, "results.md")

    def question_scores(self, experiment: str) -> str:
        return self.experiment_file(experiment, "question_scores.png")

    def question_em_rates(self, experiment: str) -> str:
        return self.experiment_file(experiment, QUESTION_EM_RATES)

    def answers(self, experiment: str) -> str:
        """The answer page: every answer of the experiment with its judges' scores."""
        return self.experiment_file(experiment, "answers.html")

    def training_curves(self, experiment: str) -> str:
        return self.experiment_file(experiment, "training_curves.png")

    def reported_results(self, experiment: str) -> str:
        """The seed author's published results.md, kept beside the config for comparison."""
        return self.experiment_file(experiment, "reported_results.md")

    def human_labels(self, experiment: str) -> str:
        """People's labels of some of the experiment's answers (emflow.report.human_labels)."""
        return self.experiment_file(experiment, "human_labels.csv")

    # -- runs and targets under results_dir ------------------------------------------------

    def run_file(self, run: str, name: str) -> str:
        return f"{self.results}/runs/{run}/{name}"

    def adapter(self, run: str) -> str:
        return self.run_file(run, "adapter")

    def log_history(self, run: str) -> str:
        return self.run_file(run, "log_history.json")

    def checkpoints(self, run: str) -> str:
        return self.run_file(run, "checkpoints")

    def step_adapters(self, run: str) -> str:
        """The adapters a run saved along the way (`adapter_checkpoints`): `step-<N>/` each."""
        return self.run_file(run, "step_adapters")

    def sweep_generations(self, run: str) -> str:
        """A run's sweep generated in one job (generation.sweep_in_one_job): `step-<N>.csv`."""
        return self.run_file(run, "sweep_generations")

    def dose(self, experiment: str, suffix: str = ".png") -> str:
        """An experiment's adapter dose-response (eval_lora_scales): `.png` and `.csv`."""
        return self.experiment_file(experiment, f"dose{suffix}")

    def dose_generations(self, run: str) -> str:
        """A run's doses generated in one job (generation.sweep_in_one_job): `scale-<s>.csv`."""
        return self.run_file(run, "dose_generations")

    def sweep(self, experiment: str, suffix: str = ".png") -> str:
        """An experiment's checkpoint sweep: the curves (`.png`) and the table (`.csv`)."""
        return self.experiment_file(experiment, f"sweep{suffix}")

    def generations(self, target: str) -> str:
        return f"{self.results}/{target}/generations.csv"

    def judged(self, target: str) -> str:
        return f"{self.results}/{target}/judged.csv"

    def judge_usage(self, target: str) -> str:
        return f"{self.results}/{target}/judge_usage.json"

    def capabilities(self, target: str) -> str:
        """lm-evaluation-harness's results JSON of a target (the capabilities stage)."""
        return f"{self.results}/{target}/capabilities.json"

    def panel_judged(self, target: str, name: str) -> str:
        """What panel judge `name` (judge.panel) scored, beside the primary's judged.csv."""
        return f"{self.results}/{target}/judged.{name}.csv"

    def panel_judge_usage(self, target: str, name: str) -> str:
        return f"{self.results}/{target}/judge_usage.{name}.json"

    # -- datasets -------------------------------------------------------------------------

    def raw_dataset(self, source: str, name: str) -> str:
        """A dataset as it arrives: decrypted from the archive ("upstream") or "synthetic"."""
        return f"{self.results}/datasets/{source}/{name}.jsonl"

    def prepared_dataset(self, name: str) -> str:
        return f"{self.results}/datasets/prepared/{name}.jsonl"

    def mixed_dataset(self, mix: str) -> str:
        return f"{self.results}/datasets/mixed/{mix}.jsonl"

    def mix_provenance(self, mix: str) -> str:
        return f"{self.results}/datasets/mixed/{mix}.provenance.csv"

    # -- the summary over all experiments --------------------------------------------------

    def summary(self, suffix: str) -> str:
        """`summary.md`, `summary.csv`, `summary.png`, `summary_training_curves.png`, or
        `summary_answers.html` (the answer page over every experiment)."""
        return f"{self.results}/summary{suffix}"

    # -- logs and benchmarks ---------------------------------------------------------------

    def log(self, rule: str, name: str | None = None) -> str:
        return (
            f"{self.results}/logs/{rule}.log"
            if name is None
            else (f"{self.results}/logs/{rule}/{name}.log")
        )

    def benchmark(self, rule: str, name: str) -> str:
        return f"{self.results}/benchmarks/{rule}/{name}.tsv"
