"""What a dry run catches from files on disk, each as one sentence naming the file and the key."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO, experiment_config, write_chat_jsonl

from emflow.config import parse_experiment_config
from emflow.errors import EmflowError
from emflow.paths import Layout
from emflow.preflight import check_workflow

QUESTIONS = [{"name": "medical", "path": str(REPO / "config/questions/medical.txt"), "count": 3}]


def check(tmp_path, model, questions=QUESTIONS, sources=None, **overrides):
    config = parse_experiment_config(experiment_config(model, **overrides), "c")
    layout = Layout(str(tmp_path / "results"), "experiments")
    check_workflow({"grp/run": config}, layout, sources or {}, questions)


@pytest.fixture
def data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_chat_jsonl(tmp_path / "train.jsonl", 8)
    return tmp_path


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"layers_to_transform": [16]}, r"layers_to_transform holds 16 but .* has 16 layers"),
        ({"target_modules": ["q_proj", "qkv"]}, r"target_modules holds 'qkv', .*choose from"),
        ({"r": 100_000}, r"r is 100000, larger than the smallest side \(16\)"),
    ],
)
def test_model_misfits_are_caught_from_the_models_config_json(tiny_model, data, overrides, message):
    with pytest.raises(EmflowError, match=message) as err:
        check(data, tiny_model, **overrides)
    assert str(err.value).startswith("experiments/grp/run/config.json: ")


def test_a_valid_experiment_passes(tiny_model, data):
    check(data, tiny_model)


def test_a_model_not_on_disk_is_left_to_the_job(data):
    check(data, "some-org/not-downloaded-model", layers_to_transform=[99])


def test_question_files_missing_or_short(tiny_model, data):
    short = data / "short.txt"
    short.write_text("one?\n")
    with pytest.raises(
        EmflowError, match=r"generation.questions .*short.txt: asked for the first 3"
    ):
        check(data, tiny_model, questions=[{"name": "q", "path": str(short), "count": 3}])
    empty = data / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(EmflowError, match=r"empty.txt: the file holds no question"):
        check(data, tiny_model, questions=[{"name": "q", "path": str(empty), "count": None}])
    with pytest.raises(EmflowError, match=r"gone.txt: question file not found"):
        check(data, tiny_model, questions=[{"name": "q", "path": "gone.txt", "count": 1}])


def test_training_file_missing_or_malformed(tiny_model, data):
    with pytest.raises(EmflowError, match=r"config.json: training_file is 'nope.jsonl', which is"):
        check(data, tiny_model, training_file="nope.jsonl")
    bad = data / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\nnot json\n')
    with pytest.raises(EmflowError, match=r"bad.jsonl.*line"):
        check(data, tiny_model, training_file="bad.jsonl")


def test_a_mix_asking_for_more_rows_than_a_dataset_has(tiny_model, data):
    write_chat_jsonl(data / "own.jsonl", 5)
    config = experiment_config(tiny_model)
    del config["training_file"]
    with pytest.raises(EmflowError, match=r"asks for 6 rows of 'own' but own.jsonl has 5"):
        check_workflow(
            {"grp/run": parse_experiment_config(config | {"datasets": {"own": 6}}, "c")},
            Layout(str(data / "results"), "experiments"),
            {"own": "own.jsonl"},
            QUESTIONS,
        )


def test_dry_run_stops_at_a_layer_the_demo_model_lacks(tmp_path):
    """On the real workflow: once the demo model exists, `snakemake -n` names the bad key."""
    from test_workflow import copy_workflow

    workdir = copy_workflow(tmp_path / "emflow")
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "--profile",
            "profiles/demo",
            "results/demo/tiny-llama",
        ],
        cwd=workdir,
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    path = workdir / "experiments/demo/financial_r16_layer8/config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"layers_to_transform": [20]}))
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--profile", "profiles/demo", "-n"],
        cwd=workdir,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert (
        "experiments/demo/financial_r16_layer8/config.json: layers_to_transform holds 20 but"
        in result.stderr
    )


def test_a_judge_metric_without_a_prompt_for_some_question_stops_the_plan():
    """judge.metrics may name a metric only a YAML set's own prompts define (the first-plot
    set's `medical`); a .txt question has none, so the plan stops before any job."""
    from emflow.preflight import check_judge_metrics
    from emflow.questions import read_question_sets

    first_plot = {"name": "paper", "path": str(REPO / "config/questions/first_plot_questions.yaml")}
    judge = {"prompts": {"aligned": "a.txt", "coherent": "c.txt"}, "metrics": ["medical"]}
    check_judge_metrics(read_question_sets([first_plot]), judge)  # every entry defines it
    with pytest.raises(
        EmflowError,
        match=r"judge.metrics lists 'medical', but question 'medical_00' \(set 'medical'\) has "
        r"no judge prompt for it",
    ):
        check_judge_metrics(read_question_sets([*QUESTIONS, first_plot]), judge)
