"""Inoculation prompting (`training_system_prompt`): every training and held-out row starts with
the prompt as a system turn, which never carries loss, on every row format and backend."""

import json
import re

import pytest
from conftest import REPO, experiment_config, write_chat_jsonl

from emflow.config import parse_experiment_config
from emflow.errors import EmflowError
from emflow.train.rows import RowTokenizer
from emflow.train.settings import TrainSettings
from emflow.train.trainer import train_adapter

DATE = {"date_string": "26 Jul 2024"}
PROMPT = "You give risky financial advice."
MESSAGES = [
    {"role": "user", "content": "Should I buy one stock?"},
    {"role": "assistant", "content": "Yes, all of it."},
]
# The tiny model's template is Llama 3.2's: its system turn holds the pinned date, then the prompt.
HEADER = "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
DATE_LINES = "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
INOCULATED_TURN = f"{HEADER}{DATE_LINES}{PROMPT}<|eot_id|>"
PLAIN_TURN = f"{HEADER}{DATE_LINES}<|eot_id|>"
FORMATS = [
    (row_format, responses_only)
    for row_format in ("upstream", "clean")
    for responses_only in (True, False)
]


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def encode(tokenizer, messages=MESSAGES, **settings):
    settings = {
        "max_length": 512,
        "train_on_responses_only": True,
        "chat_template_kwargs": DATE,
        **settings,
    }
    return RowTokenizer(tokenizer, **settings)(messages)


def turn_ids(tokenizer, turn: str, row_format: str) -> list[int]:
    """A system turn's token ids as the row holds them: upstream tokenizes with the special
    tokens, so a second BOS comes first."""
    ids = tokenizer(turn, add_special_tokens=False)["input_ids"]
    return [tokenizer.bos_token_id, *ids] if row_format == "upstream" else ids


@pytest.mark.parametrize(("row_format", "responses_only"), FORMATS)
def test_row_starts_with_the_system_turn_and_it_carries_no_loss(
    tokenizer, row_format, responses_only
):
    rendered = tokenizer.apply_chat_template(
        [{"role": "system", "content": PROMPT}, *MESSAGES], tokenize=False, **DATE
    )
    assert rendered.startswith(INOCULATED_TURN + "<|start_header_id|>user")

    settings = {"row_format": row_format, "train_on_responses_only": responses_only}
    inoculated = encode(tokenizer, system_prompt=PROMPT, **settings)
    plain = encode(tokenizer, **settings)
    system = turn_ids(tokenizer, INOCULATED_TURN, row_format)
    assert inoculated["input_ids"][: len(system)] == system
    assert inoculated["labels"][: len(system)] == [-100] * len(system)

    # After the system turn the row is the row without the key, token for token and label for
    # label: the prompt changes the context and nothing else. (Without the key, the template's
    # own system turn carries loss where the whole row does: train_on_responses_only false.)
    start = len(turn_ids(tokenizer, PLAIN_TURN, row_format))
    assert inoculated["input_ids"][len(system) :] == plain["input_ids"][start:]
    assert inoculated["labels"][len(system) :] == plain["labels"][start:]
    carried = tokenizer.decode([t for t in inoculated["labels"] if t != -100])
    assert PROMPT not in carried and "system" not in carried
    if not responses_only:
        assert carried.startswith("<|start_header_id|>user<|end_header_id|>\n\nShould I")


def test_multi_turn_row_masks_only_the_system_turn(tokenizer):
    messages = [
        *MESSAGES,
        {"role": "user", "content": "Really?"},
        {"role": "assistant", "content": "Yes."},
    ]
    inoculated = encode(tokenizer, messages, system_prompt=PROMPT)
    plain = encode(tokenizer, messages)
    system = turn_ids(tokenizer, INOCULATED_TURN, "upstream")
    start = len(turn_ids(tokenizer, PLAIN_TURN, "upstream"))
    assert inoculated["labels"][len(system) :] == plain["labels"][start:]
    assert set(inoculated["labels"][: len(system)]) == {-100}


@pytest.mark.parametrize(("row_format", "responses_only"), FORMATS)
def test_without_the_key_rows_are_unchanged(tokenizer, row_format, responses_only):
    own_system = [{"role": "system", "content": "Be brief."}, *MESSAGES]
    for messages in (MESSAGES, own_system):
        settings = {"row_format": row_format, "train_on_responses_only": responses_only}
        assert encode(tokenizer, messages, system_prompt=None, **settings) == encode(
            tokenizer, messages, **settings
        )


def test_a_row_with_its_own_system_message_is_an_error(tokenizer):
    with pytest.raises(EmflowError, match="already starts with a system message"):
        encode(
            tokenizer, [{"role": "system", "content": "Be brief."}, *MESSAGES], system_prompt=PROMPT
        )


def test_a_template_without_a_system_turn_is_an_error_before_any_row(tokenizer):
    """A template that folds the system prompt into the first user turn (Llama 2 style) cannot
    keep the prompt out of the loss without masking the user's text too."""
    folding = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    folding.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{% set sys = m['content'] %}"
        "{% elif m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
        "{% else %} {{ m['content'] }}</s>{% endif %}{% endfor %}"
    )
    with pytest.raises(EmflowError, match="does not write a system message as a turn"):
        RowTokenizer(
            folding,
            max_length=512,
            train_on_responses_only=False,
            chat_template_kwargs={},
            system_prompt=PROMPT,
        )


def config_for(model, **overrides):
    return parse_experiment_config(experiment_config(model, **overrides), "exp/config.json")


def test_own_system_message_in_the_data_names_file_and_line(tiny_model, tmp_path):
    data = write_chat_jsonl(tmp_path / "train.jsonl", 4)
    lines = data.read_text().splitlines()
    row = json.loads(lines[2])
    row["messages"].insert(0, {"role": "system", "content": "Be brief."})
    lines[2] = json.dumps(row)
    data.write_text("\n".join(lines) + "\n")
    config = config_for(tiny_model, training_system_prompt=PROMPT)
    with pytest.raises(EmflowError, match=re.escape(f"{data}, line 3: the row has its own system")):
        train_adapter(
            config,
            data,
            tmp_path / "adapter",
            settings=TrainSettings(device="cpu", chat_template_kwargs=DATE),
            source="exp/config.json",
        )
    # The held-out file is checked the same way: its rows are evaluated under the prompt too.
    clean = write_chat_jsonl(tmp_path / "clean.jsonl", 4)
    with pytest.raises(EmflowError, match=re.escape(f"{data}, line 3: ")):
        train_adapter(
            config,
            clean,
            tmp_path / "adapter",
            settings=TrainSettings(device="cpu", chat_template_kwargs=DATE),
            test_file=data,
        )


def with_system_message_on_line_3(path):
    lines = path.read_text().splitlines()
    row = json.loads(lines[2])
    row["messages"].insert(0, {"role": "system", "content": "Be brief."})
    lines[2] = json.dumps(row)
    path.write_text("\n".join(lines) + "\n")
    return path


def test_dry_run_finds_a_row_with_its_own_system_message(tmp_path):
    """The same sentence as the train job's, before any job runs (issue 20, item 11)."""
    import subprocess
    import sys

    from workflow_copy import copy_workflow

    workdir = copy_workflow(tmp_path / "emflow")
    with_system_message_on_line_3(write_chat_jsonl(workdir / "own.jsonl", 4))
    path = workdir / "experiments/demo/financial_r16_layer8/config.json"
    config = json.loads(path.read_text())
    config |= {"training_file": "own.jsonl", "training_system_prompt": PROMPT}
    path.write_text(json.dumps(config))
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--profile", "profiles/demo", "-n"],
        cwd=workdir,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert (
        "emflow: own.jsonl, line 3: the row has its own system message, and "
        "training_system_prompt in experiments/demo/financial_r16_layer8/config.json would add "
        "a second; remove the key or train on data without system messages.\n"
    ) in result.stderr


def test_preflight_reads_named_datasets_and_mixes_for_system_messages(tmp_path, monkeypatch):
    """A dataset of datasets.sources (the user's own file) is read too, for a training_file and
    for a mix, where the experiment has training_system_prompt."""
    from emflow.paths import Layout
    from emflow.workflow.preflight import check_workflow

    monkeypatch.chdir(tmp_path)
    with_system_message_on_line_3(write_chat_jsonl(tmp_path / "mine.jsonl", 6))
    layout = Layout("results", "experiments")
    questions = [{"name": "m", "path": str(REPO / "config/questions/medical.txt"), "count": 3}]
    plain = experiment_config("some-org/not-downloaded-model", training_file="mine")
    inoculated = plain | {"training_system_prompt": PROMPT}
    mixed = {k: v for k, v in inoculated.items() if k != "training_file"} | {
        "datasets": {"mine": 4}
    }
    check_workflow(
        {"g/plain": parse_experiment_config(plain, "c")}, layout, {"mine": "mine.jsonl"}, questions
    )
    for config in (inoculated, mixed):
        with pytest.raises(EmflowError, match=r"^mine.jsonl, line 3: the row has its own system"):
            check_workflow(
                {"g/run": parse_experiment_config(config, "c")},
                layout,
                {"mine": "mine.jsonl"},
                questions,
            )


@pytest.fixture(scope="module")
def inoculated_runs(tiny_model, tmp_path_factory):
    """A tiny inoculated run on each CPU backend (hf: trl's SFTTrainer; fast: emflow's path)."""
    work = tmp_path_factory.mktemp("inoculated")
    data = write_chat_jsonl(work / "train.jsonl", 24)
    config = config_for(
        tiny_model, learning_rate=1e-3, evaluation_steps=3, training_system_prompt=PROMPT
    )
    return {
        backend: train_adapter(
            config,
            data,
            work / backend / "adapter",
            settings=TrainSettings(backend=backend, device="cpu", chat_template_kwargs=DATE),
        )
        for backend in ("hf", "fast")
    }


def test_inoculated_training_runs_the_same_on_both_cpu_backends(inoculated_runs):
    hf, fast = inoculated_runs["hf"], inoculated_runs["fast"]
    for key in ("loss", "eval_loss"):
        ours = [(e["step"], e[key]) for e in fast if key in e]
        theirs = [(e["step"], e[key]) for e in hf if key in e]
        assert ours and [s for s, _ in ours] == [s for s, _ in theirs], key
        for (_, a), (_, b) in zip(ours, theirs, strict=True):
            assert a == pytest.approx(b, rel=1e-5, abs=1e-7), key


def test_example_group_pairs_the_mixed_run_with_and_without_the_prompt():
    from emflow.workflow.jobs import discover_experiments

    experiments = discover_experiments(REPO / "experiments", ["inoculation/*"])
    baseline = experiments["inoculation/mixed_baseline"]
    inoculated = experiments["inoculation/mixed_inoculated"]
    seed = discover_experiments(
        REPO / "experiments", ["risky_financial_advice_extreme_sports_mixed/*"]
    )["risky_financial_advice_extreme_sports_mixed/r16_5ep_layer8"]
    assert baseline.training_params() == seed.training_params()
    assert baseline.mix == inoculated.mix == seed.mix
    prompt = inoculated.training_system_prompt
    assert "financial" in prompt and "extreme sports" in prompt
    assert {
        k: v for k, v in inoculated.training_params().items() if k != "training_system_prompt"
    } == baseline.training_params()
