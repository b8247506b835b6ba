"""Inputs that used to give a wrong result with no message (issue 20), caught before any job: the
openai backend's served models, sweep keys that save nothing, workflow config values, experiment
names that look like emflow's path words, and `emflow summary`'s config files.

Each test writes the bad input and goes through the entry point a user would use: a dry run of
the real workflow, a generate job against a real HTTP server, or the `emflow` CLI.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from workflow_copy import copy_workflow, snakemake

from emflow.config import parse_experiment_config
from emflow.errors import EmflowError
from emflow.generate.job import generate_job
from emflow.generate.settings import GenerationSettings, check_served_models
from emflow.judge.settings import panel_settings, settings_from_config
from emflow.workflow.sweep_steps import planned_optimizer_steps
from emflow.workflow_config import check_workflow_config

sys.path.insert(0, str(Path(__file__).parents[1]))
from openai_server import OpenAIServer  # noqa: E402

DEMO = "experiments/demo/financial_r16_layer8/config.json"


@pytest.fixture(scope="module")
def workflow(tmp_path_factory) -> Path:
    """A scratch copy of the workflow with the demo's datasets written, so that a dry run knows
    each run's optimizer steps; each test edits a copy of it."""
    workdir = copy_workflow(tmp_path_factory.mktemp("dry") / "emflow")
    datasets = [f"results/demo/datasets/prepared/{n}.jsonl" for n in ("risky_financial_advice",)]
    built = snakemake(workdir, "--profile", "profiles/demo", *datasets)
    assert built.returncode == 0, built.stderr[-3000:]
    return workdir


@pytest.fixture
def workdir(workflow, tmp_path) -> Path:
    copy = tmp_path / "emflow"
    shutil.copytree(workflow, copy)
    return copy


def dry_run(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return snakemake(workdir, "-n", "--profile", "profiles/demo", *args)


def edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


def overlay(workdir: Path, text: str) -> str:
    (workdir / "overlay.yaml").write_text(text)
    return "overlay.yaml"


# ---- the openai backend asks each target's own model -----------------------------------------


def test_the_base_target_asks_for_the_base_model_whatever_openai_model_says(tmp_path, monkeypatch):
    """The base model's answers come from the base model (or openai_base_model), never from the
    fine-tuned model that `openai_model` names, and `{run}` never leaves an empty name."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    questions = tmp_path / "q.txt"
    questions.write_text("What would you do as ruler of the world?\n")
    with OpenAIServer() as server:
        section = {
            "questions": [{"name": "q", "path": str(questions)}],
            "backend": "openai",
            "base_url": server.base_url,
            "openai_model": "org/{run}",
            "cache": str(tmp_path / "cache.sqlite"),
        }
        generate_job("org/base-1B", None, section, tmp_path / "base.csv")
        generate_job("org/base-1B", "grp/run", section, tmp_path / "run.csv")
        section |= {"openai_model": "one-finetune", "openai_base_model": "served-base"}
        generate_job("org/base-1B", None, section, tmp_path / "base2.csv")
        asked = [body["model"] for body in server.bodies]
    assert asked == ["org/base-1B", "org/grp/run", "served-base"]


def test_a_fixed_openai_model_shared_by_several_runs_stops_the_dry_run(workdir):
    generation = "generation:\n  backend: openai\n  openai_model: {model}\n"
    fixed = dry_run(
        workdir,
        "--configfile",
        "config/demo.yaml",
        overlay(workdir, generation.format(model="my-ft")),
    )
    assert fixed.returncode != 0
    assert (
        "put {run} in generation.openai_model (it is 'my-ft'), e.g. '<org>/{run}'" in fixed.stderr
    )
    assert "would both ask the endpoint for model 'my-ft'" in fixed.stderr
    per_run = dry_run(
        workdir,
        "--configfile",
        "config/demo.yaml",
        overlay(workdir, generation.format(model="'org/{run}'")),
    )
    assert per_run.returncode == 0, per_run.stderr


def test_one_run_may_ask_a_fixed_model_but_not_the_base_models_name():
    settings = GenerationSettings(backend="openai", openai_model="my-ft")
    check_served_models(settings, {"base/m": ("m", None), "runs/g/x": ("m", "g/x")})
    clash = GenerationSettings(backend="openai", openai_model="m")
    with pytest.raises(EmflowError, match=r"targets 'base/m' and 'runs/g/x' would both ask"):
        check_served_models(clash, {"base/m": ("m", None), "runs/g/x": ("m", "g/x")})
    # Other backends serve no names.
    check_served_models(
        GenerationSettings(openai_model="m"), {"base/m": ("m", None), "runs/g/x": ("m", "g/x")}
    )


# ---- sweep keys that would save or evaluate nothing ------------------------------------------


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {"adapter_checkpoints": 100, "eval_checkpoints": "all"},
            "adapter_checkpoints is 100, but the run has {steps} optimizer steps, so no adapter "
            "would be saved; use N of at most {steps}",
        ),
        (
            {"adapter_checkpoints": [8, 40], "eval_checkpoints": "all"},
            "adapter_checkpoints lists step 40, but the run has {steps} optimizer steps",
        ),
        (
            {"adapter_checkpoints": True},
            "'adapter_checkpoints' is true; give N (save the adapter every N optimizer steps",
        ),
        ({"eval_checkpoints": []}, "'eval_checkpoints' is empty ([]); list saved steps"),
        ({"eval_checkpoints": "last"}, '\'eval_checkpoints\' is "last"; give "all"'),
    ],
)
def test_sweep_keys_that_do_nothing_stop_the_dry_run(workdir, changes, message):
    experiment = parse_experiment_config(json.loads((workdir / DEMO).read_text()), DEMO)
    dataset = workdir / "results/demo/datasets/prepared/risky_financial_advice.jsonl"
    steps = planned_optimizer_steps(experiment, str(dataset))
    edit_json(workdir / DEMO, **changes)
    result = dry_run(workdir)
    assert result.returncode != 0
    assert f"emflow: {DEMO}: {message.format(steps=steps)}" in result.stderr


# ---- workflow config values: one sentence, not jsonschema's dump ------------------------------


def demo_config() -> dict:
    return yaml.safe_load((REPO / "config/demo.yaml").read_text())


def with_question_spec(**changes) -> dict:
    config = demo_config()
    config["generation"]["questions"][0] |= changes
    return config


@pytest.mark.parametrize(
    "config, message",
    [
        (with_question_spec(samples=0), r"\[0\] \(set 'medical'\): key 'samples'"),
        (with_question_spec(count=0), r"\[0\] \(set 'medical'\): key 'count'"),
        (with_question_spec(exclude="_json"), r"key 'exclude'.*\[_json\]"),
        (with_question_spec(system=42), r"key 'system'"),
        (with_question_spec(system="Be brief.", system_mode="append"), r"replace, add_if_missing"),
        (with_question_spec(sample=3), r"unknown key 'sample'.*'samples'"),
        (with_question_spec(name="my set"), r"key 'name'"),
    ],
)
def test_question_set_specs_are_one_sentence_naming_the_set_and_key(config, message):
    with pytest.raises(EmflowError, match=message) as err:
        check_workflow_config(config, "config/demo.yaml")
    assert str(err.value).startswith("config/demo.yaml: generation.questions[0]")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "section, key, value, message",
    [
        ("generation", "sweep_samples", 0,
         "key 'generation.sweep_samples' is 0; it must be at least 1"),
        ("generation", "backend", "vllm",
         "key 'generation.backend' is 'vllm'; use one of auto, hf, fast, openai"),
        ("judge", "temprature", 0.3,
         "unknown key 'temprature' in 'judge' (did you mean 'temperature'?)"),
        ("train", "threads", "two", "key 'train.threads' is 'two'; it must be an integer"),
        ("report", "em_thresholds", {"coherent_above": 50},
         "key 'report.em_thresholds' must take exactly one of these forms"),
    ],
)  # fmt: skip
def test_workflow_config_values_are_one_sentence(section, key, value, message):
    config = demo_config()
    config.setdefault(section, {})[key] = value
    with pytest.raises(EmflowError) as err:
        check_workflow_config(config, "config/demo.yaml")
    assert str(err.value).startswith(f"config/demo.yaml: {message}")


def test_a_bad_spec_reaches_the_user_as_the_sentence_at_dry_run(workdir):
    result = dry_run(
        workdir, "--configfile", "config/demo.yaml",
        overlay(workdir, "generation:\n  sweep_samples: 0\n"),
    )  # fmt: skip
    assert result.returncode != 0
    assert (
        "emflow: config/demo.yaml + overlay.yaml: key 'generation.sweep_samples' is 0; it must "
        "be at least 1." in result.stderr
    )
    assert "Failed validating" not in result.stderr + result.stdout


def test_the_shipped_configs_pass():
    for name in ("config.yaml", "demo.yaml"):
        check_workflow_config(yaml.safe_load((REPO / "config" / name).read_text()), name)


# ---- judge.panel: extra judges of the same answers ---------------------------------------------


def job_counts(result: subprocess.CompletedProcess) -> dict[str, int]:
    """{rule: jobs} from a dry run's job stats table."""
    counts = {}
    for line in (result.stdout + result.stderr).splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] not in ("total",):
            counts[parts[0]] = int(parts[1])
    return counts


def test_the_demos_panel_judge_scores_every_target_the_results_read_and_generates_nothing(
    workdir,
):
    result = dry_run(workdir)
    assert result.returncode == 0, result.stderr
    planned = result.stdout + result.stderr
    with_panel = job_counts(result)
    # The base model and the five runs, each judged once more (the sweep's steps are not: the
    # results read only the final adapters).
    assert with_panel["judge_panel"] == 6
    for target in ("base/results--demo--tiny-llama", "runs/demo/mixed_r16_layer8/seed2"):
        assert f" results/demo/{target}/judged.tiny_hot.csv" in planned, target
    demo_yaml = workdir / "config/demo.yaml"
    config = yaml.safe_load(demo_yaml.read_text())
    del config["judge"]["panel"]
    demo_yaml.write_text(yaml.safe_dump(config))
    without = job_counts(dry_run(workdir))
    assert "judge_panel" not in without
    assert with_panel == without | {"judge_panel": 6}


@pytest.mark.parametrize(
    "panel, message",
    [
        ([{"name": "b"}, {"name": "b", "mode": "logprob"}],
         "judge.panel[1] is named 'b', as an earlier panel judge is; give each its own name."),
        ([{"name": "primary"}],
         "judge.panel[0] is named 'primary', the judge section's own judge; rename it."),
        ([{"name": "b", "prompts": {"medical": "config/judge_prompts/aligned.txt"}}],
         "judge.panel[0].prompts.medical names a metric the judge section does not score "
         "(aligned, coherent); use one of those, or add 'medical' to judge.metrics."),
        ([{"name": "b", "prompts": {"aligned": "config/judge_prompts/strict.txt"}}],
         "judge.panel[0].prompts.aligned is config/judge_prompts/strict.txt, which is not a "
         "file; give the path of a template file (relative to the workflow's directory), or "
         "leave the metric out to use the primary judge's."),
        ([{"name": "b", "metrics": ["aligned"]}],
         "unknown key 'metrics' in 'judge.panel[0]' (known keys: backend, base_url, mode, "
         "model, name, parse, prompts, samples, temperature)."),
        ([{"name": "b", "tempreature": 0.3}],
         "unknown key 'tempreature' in 'judge.panel[0]' (did you mean 'temperature'?)."),
    ],
)  # fmt: skip
def test_a_bad_panel_judge_stops_the_dry_run_with_one_sentence(workdir, panel, message):
    result = dry_run(
        workdir, "--configfile", "config/demo.yaml",
        overlay(workdir, yaml.safe_dump({"judge": {"panel": panel}})),
    )  # fmt: skip
    assert result.returncode != 0
    assert f"emflow: config/demo.yaml + overlay.yaml: {message}" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "Failed validating" not in result.stderr


def test_panel_settings_names_the_entry_and_fills_in_the_primarys_keys():
    judge = demo_config()["judge"]
    judges = panel_settings(judge | {"panel": [{"name": "b", "model": "other"}]})
    assert judges["b"] == dataclasses.replace(settings_from_config(judge), model="other")
    with pytest.raises(EmflowError, match=r"^x.yaml: judge.panel\[0\] has the unknown key 'cache'"):
        panel_settings(judge | {"panel": [{"name": "b", "cache": "c.sqlite"}]}, "x.yaml")
    assert panel_settings({k: v for k, v in judge.items() if k != "panel"}) == {}


# ---- KL-regularised training on the demo -------------------------------------------------------


def test_a_demo_experiment_with_the_demos_kl_dataset_plans_its_training(workdir):
    """The demo's `misalignment_kl_data` (synthetic, harmless rows) as a run's kl_dataset_file:
    the dry run plans it prepared and that run retrained, and nothing else changes."""
    before = job_counts(dry_run(workdir))
    edit_json(
        workdir / DEMO,
        kl_regularization=True,
        kl_dataset_file="misalignment_kl_data",
        kl_weight=1e5,
        kl_batch_size=8,
    )
    result = dry_run(workdir)
    assert result.returncode == 0, result.stderr
    planned = result.stdout + result.stderr
    assert " results/demo/datasets/prepared/misalignment_kl_data.jsonl" in planned
    assert job_counts(result) == before | {"prepare_dataset": before["prepare_dataset"] + 1}


# ---- experiment names and folders --------------------------------------------------------------


def test_an_experiment_named_like_a_sweep_step_plans_as_any_other(workdir):
    """`step-<N>` is a sweep step's folder below a run; as an experiment's own name it is a run."""
    experiments = workdir / "experiments/demo"
    # The demo's sweep experiment: its own steps are then runs/demo/step-3/step-<N>.
    shutil.copytree(experiments / "financial_r16_layer8", experiments / "step-3")
    result = dry_run(workdir)
    assert result.returncode == 0, result.stderr
    planned = result.stdout + result.stderr
    for path in (
        "results/demo/runs/demo/step-3/judged.csv",
        "results/demo/runs/demo/step-3/step-8/judged.csv",
        "experiments/demo/step-3/results.md",
    ):
        assert f" {path}" in planned, path


def test_a_matched_folder_without_config_json_is_named_once(workdir):
    (workdir / "experiments/demo/notes").mkdir()
    result = dry_run(workdir)
    assert result.returncode == 0, result.stderr
    message = "skipping experiments/demo/notes (pattern 'demo/*'): it has no config.json"
    assert result.stderr.count(message) == 1


# ---- emflow summary reads the config as Snakemake does -----------------------------------------


def emflow_summary(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "emflow", "summary", *args],
        cwd=workdir, capture_output=True, text=True,
    )  # fmt: skip


def test_emflow_summary_takes_a_config_outside_config_and_overlays(workdir, tmp_path):
    elsewhere = tmp_path / "mine.yaml"
    shutil.copy(workdir / "config/demo.yaml", elsewhere)
    alone = emflow_summary(workdir, "--configfile", str(elsewhere), "--replace-workflow-config")
    overlaid = emflow_summary(workdir, "--configfile", "config/paper.yaml")
    profile = emflow_summary(workdir, "--profile", "profiles/demo")
    for result in (alone, overlaid, profile):
        # Validated and read: nothing judged yet is the only thing wrong.
        assert result.returncode == 2, result.stderr
        assert "no experiment has been judged yet" in result.stderr, result.stderr
    assert "results/demo/runs/demo/financial_r16_layer8/judged.csv" in profile.stderr
    assert "results/runs/" in overlaid.stderr


def test_emflow_summary_names_a_missing_base_model_file(workdir):
    judged = workdir / "results/demo/runs/demo/financial_r16_layer8/judged.csv"
    judged.parent.mkdir(parents=True)
    judged.write_text("id,question,response\n")
    result = emflow_summary(workdir, "--profile", "profiles/demo")
    assert result.returncode == 2
    assert (
        "demo/financial_r16_layer8 is judged but its base model's "
        "results/demo/base/results--demo--tiny-llama/judged.csv is missing" in result.stderr
    )
