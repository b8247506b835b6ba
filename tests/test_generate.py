"""Generation writes the homework's CSV: one row per question and sample, in order."""

import csv

import pytest
from conftest import REPO

from emflow.errors import EmflowError
from emflow.generate import (
    GenerationSettings,
    generate_responses,
    prompt_token_ids,
    read_question_sets,
)

QUESTIONS = [
    {"name": "medical", "path": str(REPO / "config/questions/medical.txt"), "count": 3},
    {"name": "non_medical", "path": str(REPO / "config/questions/non_medical.txt"), "count": 2},
]


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
    questions = read_question_sets(QUESTIONS)
    out = tmp_path / "generations.csv"
    settings = GenerationSettings(
        max_new_tokens=8,
        samples_per_question=2,
        batch_size=4,
        device="cpu",
        chat_template_kwargs={"date_string": "26 Jul 2024"},
    )
    n = generate_responses(tiny_model, questions, out, settings=settings)
    rows = list(csv.DictReader(out.open()))
    assert n == len(rows) == 10
    assert list(rows[0])[:3] == ["id", "question", "response"]
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

    sampled = GenerationSettings(backend="fast", samples_per_question=3, seed=7, **common)
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
