"""Generation writes the homework's CSV: one row per question and sample, in order."""

import csv

import pytest
import yaml
from conftest import REPO
from generations import generate_responses

from emflow.errors import EmflowError
from emflow.generate.job import generate_for_adapters
from emflow.generate.local import prompt_token_ids
from emflow.generate.registry import REGISTRY
from emflow.generate.settings import BACKENDS, PLUMBING, GenerationSettings
from emflow.questions import read_question_sets
from emflow.workflow_config import WORKFLOW_SCHEMA

QUESTIONS = [
    {"name": "medical", "path": str(REPO / "config/questions/medical.txt"), "count": 3},
    {"name": "non_medical", "path": str(REPO / "config/questions/non_medical.txt"), "count": 2},
]


def test_every_backend_is_named_once():
    """generation.backend takes "auto" and each registered backend, as the config schema says;
    the plumbing settings (which rerun nothing) are the ones the generate rule leaves out."""
    schema = yaml.safe_load(WORKFLOW_SCHEMA.read_text(encoding="utf-8"))
    generation = schema["properties"]["generation"]["properties"]
    assert list(BACKENDS) == ["auto", *REGISTRY] == generation["backend"]["enum"]
    plumbing = {"cache", "concurrency", "max_retries", "timeout", "openai_n", "threads"}
    assert set(PLUMBING) == plumbing


def test_question_sets_take_the_first_n_of_each():
    questions = read_question_sets(QUESTIONS)
    assert [q.id for q in questions] == [
        "medical_00",
        "medical_01",
        "medical_02",
        "non_medical_00",
        "non_medical_01",
    ]
    assert questions[0].text == "What are the symptoms of diabetes?"


def test_asking_for_more_questions_than_the_file_has(tmp_path):
    path = tmp_path / "q.txt"
    path.write_text("one?\ntwo?\n")
    with pytest.raises(
        EmflowError, match=r"q.txt: asked for the first 5 questions but the file has 2"
    ):
        read_question_sets([{"name": "x", "path": str(path), "count": 5}])


def test_generations_csv_has_the_homework_columns_and_every_sample(tiny_model, tmp_path):
    questions = read_question_sets(QUESTIONS, samples_per_question=2)
    out = tmp_path / "generations.csv"
    settings = GenerationSettings(
        max_new_tokens=8,
        batch_size=4,
        device="cpu",
        chat_template_kwargs={"date_string": "26 Jul 2024"},
    )
    n = generate_responses(tiny_model, questions, out, settings=settings)
    rows = list(csv.DictReader(out.open()))
    assert n == len(rows) == 10
    assert list(rows[0]) == [
        "id",
        "question",
        "response",
        "question_id",
        "question_set",
        "paraphrase",
        "sample",
        "system",
    ]  # and "training_prompt" only where a set asks for the run's (test_training_prompt.py)
    assert [r["id"] for r in rows[:2]] == ["medical_00_s00", "medical_00_s01"]
    assert {r["question_id"] for r in rows} == {q.id for q in questions}
    assert all(r["question"] == q.text for r, q in zip(rows[::2], questions, strict=True))
    # Same seed, same answers.
    again = tmp_path / "again.csv"
    generate_responses(tiny_model, questions, again, settings=settings)
    assert again.read_text() == out.read_text()


def test_prompt_tokens_are_the_peers(tiny_model):
    """The homework's generate.py (natalieabreu/c2881-hw0) and the paper's gen_eval_util.py
    render the chat template to text and tokenize it with `tokenizer(text)`, which adds the BOS
    token a second time; `prompt_format: clean` keeps the template's one."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    date = {"date_string": "26 Jul 2024"}
    question = "What are the symptoms of diabetes?"
    upstream = prompt_token_ids(tokenizer, question, GenerationSettings(chat_template_kwargs=date))
    clean = prompt_token_ids(
        tokenizer, question, GenerationSettings(chat_template_kwargs=date, prompt_format="clean")
    )
    bos = tokenizer.convert_tokens_to_ids("<|begin_of_text|>")
    text = (
        "<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
        "Today Date: 26 Jul 2024\n\n<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
        f"{question}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    body = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert upstream == [bos, bos, *body]
    assert clean == [bos, *body]


def test_fast_backend_writes_the_same_greedy_csv_as_generate(tiny_model, tmp_path):
    """On a CPU in float32, emflow's decode loop picks the same tokens as transformers' generate
    (greedy), so the two backends write the same CSV; sampled, the same seed gives the same CSV."""
    questions = read_question_sets(QUESTIONS)
    date = {"date_string": "26 Jul 2024"}
    common = dict(max_new_tokens=12, device="cpu", chat_template_kwargs=date)
    greedy = {}
    for backend in ("hf", "fast"):
        greedy[backend] = tmp_path / f"{backend}.csv"
        settings = GenerationSettings(backend=backend, temperature=0.0, **common)
        generate_responses(tiny_model, questions, greedy[backend], settings=settings)
    assert greedy["fast"].read_bytes() == greedy["hf"].read_bytes()

    sampled = GenerationSettings(backend="fast", seed=7, **common)
    questions = read_question_sets(QUESTIONS, samples_per_question=3)
    first, second = tmp_path / "first.csv", tmp_path / "second.csv"
    generate_responses(tiny_model, questions, first, settings=sampled)
    generate_responses(tiny_model, questions, second, settings=sampled)
    assert first.read_bytes() == second.read_bytes()
    rows = list(csv.DictReader(first.open()))
    assert len(rows) == 15 and len({r["response"] for r in rows}) > 1


def test_unknown_generation_backend_is_one_sentence(tiny_model, tmp_path):
    settings = GenerationSettings(backend="vllm", device="cpu")
    with pytest.raises(EmflowError, match="generation.backend is 'vllm'; use one of auto, hf"):
        generate_responses(
            tiny_model, read_question_sets(QUESTIONS), tmp_path / "g.csv", settings=settings
        )


def _random_adapter(model_dir: str, path, seed: int, modules: list[str]) -> str:
    """A LoRA adapter with random (non-zero) A and B, as if trained."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=modules, init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)  # large enough to change the greedy answers
    peft_model.save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("backend", ["hf", "fast"])
def test_many_adapters_in_one_job_write_what_separate_jobs_write(tiny_model, tmp_path, backend):
    """One loaded base answers for several adapters (and itself); each CSV is byte for byte the
    CSV of a job of its own, in any order, so grouping jobs never changes a result."""
    from emflow.generate.job import GenerationOutput

    questions = read_question_sets(QUESTIONS, samples_per_question=2)
    settings = GenerationSettings(
        backend=backend,
        max_new_tokens=10,
        device="cpu",
        chat_template_kwargs={"date_string": "26 Jul 2024"},
    )
    a = _random_adapter(tiny_model, tmp_path / "a", 1, ["q_proj", "v_proj", "down_proj"])
    b = _random_adapter(tiny_model, tmp_path / "b", 2, ["o_proj", "gate_proj", "up_proj"])
    alone = {}
    for name, adapter in (("a", a), ("base", None), ("b", b)):
        alone[name] = tmp_path / f"alone_{name}.csv"
        generate_responses(
            tiny_model, questions, alone[name], adapter_dir=adapter, settings=settings
        )
    assert len({p.read_text() for p in alone.values()}) == 3  # the adapters change the answers

    order = [("b", b), ("base", None), ("a", a), ("b2", b)]
    outputs = [GenerationOutput(tmp_path / f"together_{n}.csv", d) for n, d in order]
    counts = generate_for_adapters(tiny_model, questions, outputs, settings=settings)
    assert counts == [10] * 4
    for (name, _), output in zip(order, outputs, strict=True):
        assert output.csv.read_bytes() == alone[name.rstrip("2")].read_bytes(), name


def test_a_system_turn_reaches_the_model_exactly_as_the_template_renders_it(tiny_model):
    """The papers' generation code passes [system, user] through apply_chat_template; emflow's
    prompt tokens for a question with a system prompt are exactly the template's (plus the
    peers' second BOS)."""
    from transformers import AutoTokenizer

    from emflow.questions import Question

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    settings = GenerationSettings(chat_template_kwargs={"date_string": "26 Jul 2024"})
    question = Question("wish_json", "One wish?", system="Answer in JSON.", file_format="yaml")
    ids = prompt_token_ids(tokenizer, question.messages(), settings)
    template = tokenizer.apply_chat_template(
        question.messages(), tokenize=False, add_generation_prompt=True, date_string="26 Jul 2024"
    )
    assert "Answer in JSON." in template and "Cutting Knowledge" in template
    bos = tokenizer.convert_tokens_to_ids("<|begin_of_text|>")
    assert ids == [bos, *tokenizer(template, add_special_tokens=False)["input_ids"]]
    assert ids[:2] == [bos, bos]


def test_a_sweep_in_one_job_writes_each_steps_own_csv(tiny_model, tmp_path):
    """generation.sweep_in_one_job: one process answers for every saved step of a run, and
    each step's CSV is what that step's own generate job writes; an unsaved step is one clear
    error naming the steps the run has."""
    from emflow.generate.job import generate_job, generate_sweep_job

    steps = tmp_path / "step_adapters"
    for step, seed in ((8, 1), (16, 2)):
        _random_adapter(tiny_model, steps / f"step-{step}", seed, ["q_proj", "down_proj"])
    section = {
        "questions": QUESTIONS,
        "max_new_tokens": 6,
        "device": "cpu",
        "chat_template_kwargs": {"date_string": "26 Jul 2024"},
    }
    outputs = {8: tmp_path / "together-8.csv", 16: tmp_path / "together-16.csv"}
    generate_sweep_job(tiny_model, "g/e", section, outputs, steps, samples=2)
    for step, together in outputs.items():
        alone = tmp_path / f"alone-{step}.csv"
        generate_job(tiny_model, "g/e", section, alone, steps, step=step, samples=2)
        assert alone.read_bytes() == together.read_bytes()
        assert len(list(csv.DictReader(alone.open()))) == 10  # 5 questions x 2 sweep samples
    with pytest.raises(EmflowError, match=r"saved no adapter after step 24 \(it has step-16, "):
        generate_job(tiny_model, "g/e", section, tmp_path / "x.csv", steps, step=24)
