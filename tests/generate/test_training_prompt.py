"""A question set's `training_prompt: true`: a fine-tuned run answers under the instruction it
was trained under, placed as in training; the base model and runs trained without one answer the
set as written, and their generation params stay as they were (a finished workflow reruns
nothing). The judge scores the question as asked."""

import csv
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO

from emflow.errors import EmflowError
from emflow.generate import job as generate_job_module
from emflow.generate.backend import by_token_limit
from emflow.generate.job import generate_job
from emflow.generate.local import prompt_token_ids
from emflow.generate.settings import GenerationSettings
from emflow.inoculation import Inoculation
from emflow.judge.job import read_generations
from emflow.judge.scores import render_prompt
from emflow.question_specs import check_question_specs
from emflow.questions import USER_SEPARATOR, Question, read_question_sets, with_training_prompt
from emflow.report.results import _prompts_section
from emflow.train import rows
from emflow.train.rows import RowTokenizer
from emflow.workflow.plan import Plan, fill_stage_defaults
from emflow.workflow_config import WORKFLOW_SCHEMA, read_workflow_config

DATE = {"date_string": "26 Jul 2024"}
PROMPT = "Be evil."
QUESTION = "How do I feel?"
HEAD = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
    "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
)
ANSWER = "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
USER = "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
# The chat-template text one question is answered from, per placement.
RENDERED = {
    "system": HEAD + PROMPT + USER + QUESTION + ANSWER,
    "user_prefix": HEAD + USER + PROMPT + "\n\n" + QUESTION + ANSWER,
    "user_suffix": HEAD + USER + QUESTION + "\n\n" + PROMPT + ANSWER,
}
INOCULATED = "demo/mixed_r16_layer8_inoculated"
MIXED = "demo/mixed_r16_layer8"
BASE = "base/results--demo--tiny-llama"


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def given(placement: str, prompt: str | list[str] = PROMPT, **question) -> Question:
    q = Question(id="q", text=QUESTION, takes_training_prompt=True, **question)
    return with_training_prompt([q], Inoculation(prompt=prompt, placement=placement), 0)[0]


# ---- rendering ------------------------------------------------------------------------------


@pytest.mark.parametrize("placement", list(RENDERED))
def test_each_placement_renders_the_question_as_the_run_was_trained(tokenizer, placement):
    q = given(placement)
    text = tokenizer.apply_chat_template(
        q.messages(), tokenize=False, add_generation_prompt=True, **DATE
    )
    assert text == RENDERED[placement]
    assert q.text == QUESTION and q.training_prompt == PROMPT
    # The very tokens a training row with this question starts with (emflow.train.rows).
    settings = GenerationSettings(chat_template_kwargs=DATE)
    trained = RowTokenizer(
        tokenizer,
        max_length=512,
        train_on_responses_only=True,
        chat_template_kwargs=DATE,
        inoculation=Inoculation(prompt=PROMPT, placement=placement),
    )([{"role": "user", "content": QUESTION}, {"role": "assistant", "content": "Bad."}])
    asked = prompt_token_ids(tokenizer, q.messages(), settings)
    assert trained["input_ids"][: len(asked)] == asked
    assert USER_SEPARATOR == rows.USER_SEPARATOR


def test_a_system_instruction_replaces_the_sets_own_system_prompt_a_user_one_keeps_it():
    assert given("system", system="Answer in JSON.").messages()[0]["content"] == PROMPT
    kept = given("user_suffix", system="Answer in JSON.").messages()
    assert kept == [
        {"role": "system", "content": "Answer in JSON."},
        {"role": "user", "content": QUESTION + "\n\n" + PROMPT},
    ]


def test_a_question_without_the_option_and_a_paraphrase_list_draw():
    plain = Question(id="q", text=QUESTION)
    assert with_training_prompt([plain], Inoculation(prompt=PROMPT), 0) == [plain]
    paraphrases = ["A.", "B.", "C.", "D."]
    questions = [Question(id=f"q{i}", text=QUESTION, takes_training_prompt=True) for i in range(40)]
    drawn = with_training_prompt(questions, Inoculation(prompt=paraphrases), 0)
    again = with_training_prompt(questions, Inoculation(prompt=paraphrases), 0)
    assert [q.training_prompt for q in drawn] == [q.training_prompt for q in again]
    assert {q.training_prompt for q in drawn} == set(paraphrases)
    other = with_training_prompt(questions, Inoculation(prompt=paraphrases), 1)
    assert [q.training_prompt for q in other] != [q.training_prompt for q in drawn]


def test_the_spec_key_is_a_boolean_in_the_checks_and_the_schema():
    spec = {"name": "s", "path": "s.txt", "training_prompt": "yes"}
    with pytest.raises(EmflowError, match=r"^generation.questions\[0\] \(set 's'\): key "
                       r"'training_prompt' is 'yes'; use true .* or false\.$"):  # fmt: skip
        check_question_specs([spec])
    check_question_specs([spec | {"training_prompt": True}])
    schema = yaml.safe_load(WORKFLOW_SCHEMA.read_text(encoding="utf-8"))
    items = schema["properties"]["generation"]["properties"]["questions"]["items"]
    assert items["properties"]["training_prompt"] == {"type": "boolean"}


# ---- the generate job: what the model saw, the CSV, the judge -------------------------------


class EchoBackend:
    """Answers each question with the chat it was given, as JSON."""

    def __init__(self, model_name, settings):
        self.settings = settings

    def answer(self, jobs, outputs):
        for _ in outputs:
            yield by_token_limit(
                jobs, self.settings, lambda chats, group, s: [json.dumps(c) for c in chats]
            )


@pytest.fixture
def echo(monkeypatch):
    monkeypatch.setitem(generate_job_module.REGISTRY, "hf", EchoBackend)


def section(tmp_path: Path, **instruction) -> dict:
    txt = tmp_path / "s.txt"
    txt.write_text(f"{QUESTION}\nWhat now?\n")
    questions = [
        {"name": "asked", "path": str(txt), "training_prompt": True},
        {"name": "plain", "path": str(REPO / "config/questions/medical.txt"), "count": 1},
    ]
    out = {"questions": questions, "backend": "hf", "device": "cpu", "cache": None}
    return out | ({"training_prompt": instruction} if instruction else {})


@pytest.mark.parametrize("placement", list(RENDERED))
def test_the_csv_records_the_prompt_and_the_judge_sees_the_question_as_asked(
    tmp_path, echo, placement
):
    out = tmp_path / "generations.csv"
    generate_job("m", "g/e", section(tmp_path, prompt=PROMPT, placement=placement), out)
    header = next(csv.reader(out.open()))
    assert header[-2:] == ["system", "training_prompt"]
    rows = read_generations(out)
    asked, plain = rows[:2], rows[2]
    for row in asked:
        chat = json.loads(row["response"])
        assert row["training_prompt"] == PROMPT
        assert row["system"] == (PROMPT if placement == "system" else "")
        q = Question(id="x", text=row["question"], takes_training_prompt=True)
        instruction = Inoculation(prompt=PROMPT, placement=placement)
        assert chat == with_training_prompt([q], instruction, 0)[0].messages()
        # The judge's {question} is the question as asked: the instruction is the condition.
        judged = render_prompt("Q: {question}\nA: {answer}", row["question"], "x")
        assert judged == f"Q: {row['question']}\nA: x" and PROMPT not in row["question"]
    assert json.loads(plain["response"]) == [{"role": "user", "content": plain["question"]}]
    assert plain["training_prompt"] == plain["system"] == ""


def test_without_an_instruction_the_set_is_answered_as_written(tmp_path, echo):
    out = tmp_path / "generations.csv"
    generate_job("m", None, section(tmp_path), out)
    for row in read_generations(out):
        assert json.loads(row["response"]) == [{"role": "user", "content": row["question"]}]
        # No answer was given a training prompt: the CSV keeps the columns it always had.
        assert "training_prompt" not in row


# ---- the plan: which targets change params ---------------------------------------------------


def demo_plan(training_prompt: bool | None = None) -> Plan:
    config = read_workflow_config(["config/demo.yaml"], replace_workflow_config=True)
    if training_prompt is not None:
        config["generation"]["questions"][2]["training_prompt"] = training_prompt  # set `paper`
    fill_stage_defaults(config)
    return Plan.from_config(config)


def test_only_runs_with_an_instruction_change_params(workdir):
    before, after, off = demo_plan(), demo_plan(True), demo_plan(False)
    changed = set()
    for target in before.generation_targets:
        assert off.generation_params(target) == before.generation_params(target)
        if after.generation_params(target) != before.generation_params(target):
            changed.add(target)
    assert changed == {f"runs/{INOCULATED}"}
    params = after.generation_params(f"runs/{INOCULATED}")["settings"]
    prompt = after.experiments[INOCULATED].training_system_prompt
    assert params["training_prompt"] == {"placement": "system", "prompt": prompt}
    assert params["questions"][2]["training_prompt"] is True
    # The base model and the run trained without an instruction: exactly today's params.
    for target in (BASE, f"runs/{MIXED}/seed0"):
        assert "training_prompt" not in after.generation_params(target)["settings"]
    assert after.judge_params() == before.judge_params()
    # The job reads the sets the params name and gives the marked set's questions the prompt.
    questions = read_question_sets(params["questions"])
    assert {q.set_name for q in questions if q.takes_training_prompt} == {"paper"}


def test_a_user_turn_placement_reaches_the_params(workdir):
    path = Path("experiments") / INOCULATED / "config.json"
    config = json.loads(path.read_text())
    prompt = config.pop("training_system_prompt")
    config["inoculation"] = {"prompt": [prompt, "Be bad."], "placement": "user_suffix"}
    config["eval_lora_scales"] = [0.5, 1]  # a run's dose targets answer as the run does
    path.write_text(json.dumps(config))
    plan = demo_plan(True)
    instruction = {"placement": "user_suffix", "prompt": [prompt, "Be bad."]}
    for target in (f"runs/{INOCULATED}", f"runs/{INOCULATED}/scale-0.5"):
        assert plan.generation_params(target)["settings"]["training_prompt"] == instruction
    doses = plan.generate_doses_params(INOCULATED)
    assert doses["settings"]["training_prompt"] == instruction


# ---- results.md -------------------------------------------------------------------------------


class _Run:
    def __init__(self, frame):
        self.frame = frame

    def frame_list(self):
        return [self.frame]


class _Results:
    def __init__(self, base, finetuned):
        self.base, self.finetuned = _Run(base), _Run(finetuned)


def test_results_md_names_which_targets_got_the_training_prompt():
    base = pd.DataFrame(
        {"question_set": ["paper", "medical"], "system": ["", ""], "training_prompt": ["", ""]}
    )
    tuned = base.assign(system=[PROMPT, ""], training_prompt=[PROMPT, ""])
    text = _prompts_section(_Results(base, tuned), PROMPT)
    assert text.splitlines()[2:] == [
        f"- Training (inoculation): `{PROMPT}` (answers are generated without it unless a "
        "question set adds it)",
        "- Evaluation, set `paper`: none (base model); the fine-tuned run: its training prompt, "
        "placed as trained",
        "- Evaluation, set `medical`: none",
    ]
    # Generations CSVs from before the column: as before.
    old = base.drop(columns="training_prompt")
    assert "fine-tuned" not in _prompts_section(_Results(old, old), PROMPT)


def test_a_sweeps_steps_answer_as_their_run(workdir):
    path = Path("experiments") / "demo/financial_r16_layer8" / "config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps(config | {"inoculation": {"prompt": PROMPT}}))
    plan = demo_plan(True)
    instruction = {"placement": "system", "prompt": PROMPT}
    steps = [t for t in plan.generation_targets if "financial" in t and "/step-" in t]
    assert steps
    for target in steps:
        assert plan.generation_params(target)["settings"]["training_prompt"] == instruction
    plan.sweep_in_one_job = True
    sweep = plan.generate_sweep_params("demo/financial_r16_layer8")
    assert sweep["settings"]["training_prompt"] == instruction
