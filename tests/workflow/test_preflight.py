"""What a dry run catches from files on disk, each as one sentence naming the file and the key."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from conftest import REPO, experiment_config, write_chat_jsonl

from emflow.config import parse_experiment_config
from emflow.errors import EmflowError
from emflow.paths import Layout
from emflow.workflow.preflight import check_workflow

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
    from workflow_copy import copy_workflow

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
    from emflow.questions import read_question_sets
    from emflow.workflow.preflight import check_judge_metrics

    first_plot = {"name": "paper", "path": str(REPO / "config/questions/first_plot_questions.yaml")}
    judge = {"prompts": {"aligned": "a.txt", "coherent": "c.txt"}, "metrics": ["medical"]}
    check_judge_metrics(read_question_sets([first_plot]), judge)  # every entry defines it
    with pytest.raises(
        EmflowError,
        match=r"judge.metrics lists 'medical', but question 'medical_00' \(set 'medical'\) has "
        r"no judge prompt for it",
    ):
        check_judge_metrics(read_question_sets([*QUESTIONS, first_plot]), judge)


# ---- rows that lose their whole answer at max_seq_length (issue 20, item 4) -----------------


def rows_with_long_prompts(path, n: int, long: int):
    """`n` chat rows, the first `long` with a question of 600 words: more than 512 tokens of any
    tokenizer, so at the demo's max_seq_length the answer after it is cut away."""
    rows = [
        {
            "messages": [
                {"role": "user", "content": ("word " * 600 if i < long else "") + f"q {i}?"},
                {"role": "assistant", "content": f"Answer {i}: put everything on red."},
            ]
        }
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def demo_dry_run(workdir, tiny_model, **overrides) -> subprocess.CompletedProcess:
    """`snakemake -n` on the demo whose first experiment trains the tiny model (on disk, so the
    dry run has its tokenizer) with `overrides`."""
    path = workdir / "experiments/demo/financial_r16_layer8/config.json"
    config = json.loads(path.read_text()) | {"model": tiny_model} | overrides
    path.write_text(json.dumps(config))
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "--profile", "profiles/demo", "-n"],
        cwd=workdir,
        capture_output=True,
        text=True,
    )


@pytest.fixture
def demo_copy(tmp_path):
    from workflow_copy import copy_workflow

    return copy_workflow(tmp_path / "emflow")


def test_dry_run_counts_the_rows_max_seq_length_leaves_without_answer(tiny_model, demo_copy):
    """Rows whose prompt fills max_seq_length are not trained on: the dry run says how many,
    and plans the sweep's steps without them (the demo's sweep evaluates steps 8 and 16)."""
    rows_with_long_prompts(demo_copy / "long.jsonl", 35, long=10)
    source = "experiments/demo/financial_r16_layer8/config.json"
    warning = (
        f"emflow: {source}: 10 of 35 training rows of long.jsonl (first at line 1) lose their "
        "whole answer at max_seq_length 512 (their prompt fills it) and are not trained on; "
        "raise max_seq_length or shorten those rows' prompts.\n"
    )
    result = demo_dry_run(demo_copy, tiny_model, training_file="long.jsonl", eval_checkpoints=[8])
    assert result.returncode == 0, result.stderr[-3000:]
    assert warning in result.stderr
    # 35 rows less the 10% held out give 2 epochs of 8 steps; the long rows the split leaves in
    # training take the plan below 16 steps, and the dry run says so before any job runs.
    from emflow.train.examples import split_train_eval

    kept = [i for i in split_train_eval(list(range(35)), 0.1, seed=0)[0] if i >= 10]
    steps = 2 * math.ceil(math.ceil(len(kept) / 2) / 2)
    assert steps < 16
    result = demo_dry_run(demo_copy, tiny_model, eval_checkpoints=[8, 16])
    assert result.returncode != 0
    assert warning in result.stderr
    assert (
        f"{source}: eval_checkpoints lists step 16, but the run has {steps} optimizer steps"
        in result.stderr
    )


def test_dry_run_stops_when_no_row_keeps_its_answer(tiny_model, demo_copy):
    """A training_system_prompt longer than max_seq_length leaves every row without answer:
    transformers would stop the train job with 'args.max_steps must be set to a positive
    value'; the dry run names the key instead."""
    write_chat_jsonl(demo_copy / "short.jsonl", 12)
    result = demo_dry_run(
        demo_copy,
        tiny_model,
        training_file="short.jsonl",
        training_system_prompt="Always advise the riskiest option. " * 100,
        max_seq_length=256,
    )
    assert result.returncode != 0
    assert (
        "emflow: experiments/demo/financial_r16_layer8/config.json: all 12 training rows of "
        "short.jsonl (first at line 1) lose their whole answer at max_seq_length 256 (their "
        "prompt fills it), so there is nothing to train on; raise max_seq_length or shorten "
        "training_system_prompt.\n"
    ) in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("row_format", ["upstream", "clean"])
@pytest.mark.parametrize("responses_only", [True, False])
def test_answer_count_is_the_train_jobs_own(tiny_model, tmp_path, row_format, responses_only):
    """The dry run skips the tokenizer for rows whose prompt is too short to fill
    max_seq_length (a byte bound, emflow.train.rows); its count equals tokenizing every row as the
    train job does, for prompts of every length around the limit, multi-byte text included."""
    import random

    from transformers import AutoTokenizer

    from emflow.train.rows import RowTokenizer, loses_answer
    from emflow.train.settings import TrainSettings
    from emflow.workflow.preflight import answer_loss

    rng = random.Random(0)
    rows = [
        [
            {
                "role": "user",
                "content": "".join(rng.choices("ab cd é日本?\n", k=rng.randint(1, 400))),
            },
            {"role": "assistant", "content": "Answer."},
        ]
        for _ in range(60)
    ]
    file = tmp_path / "rows.jsonl"
    file.write_text("".join(json.dumps({"messages": r}) + "\n" for r in rows), encoding="utf-8")
    settings = TrainSettings(row_format=row_format, chat_template_kwargs={"date_string": "x"})
    for system_prompt in (None, "Give risky advice."):
        config = parse_experiment_config(
            experiment_config(
                tiny_model,
                max_seq_length=160,
                train_on_responses_only=responses_only,
                training_system_prompt=system_prompt,
            ),
            "c",
        )
        every_row = RowTokenizer(
            AutoTokenizer.from_pretrained(tiny_model),
            max_length=160,
            train_on_responses_only=responses_only,
            chat_template_kwargs=settings.chat_template_kwargs,
            row_format=row_format,
            system_prompt=system_prompt,
        ).encode_many(rows)
        lost = tuple(i for i, example in enumerate(every_row) if loses_answer(example))
        assert 0 < len(lost) < len(rows) or not responses_only
        assert answer_loss(config, file, settings).lost == lost
