"""Generation: a model (base, or base + LoRA adapter) answers the question set into a CSV.

The CSV keeps the homework's columns, `id,question,response`, which its grader checks, and adds
`question_id` and `sample` after them so that answers can be grouped per question.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emflow.atomic import atomic_path
from emflow.config import settings_from
from emflow.errors import EmflowError

log = logging.getLogger("emflow.generate")

GENERATION_COLUMNS = ["id", "question", "response", "question_id", "sample"]


@dataclass(frozen=True)
class GenerationSettings:
    """Sampling settings (homework: 200 new tokens, temperature 1, top_p 1, one sample)."""

    # "auto": `fast` on a GPU, `hf` on a CPU; "hf": transformers' generate (the reference);
    # "fast": emflow's own decode loop (emflow.generate_fast), the same sampling, near the
    # hardware's speed.
    backend: str = "auto"
    max_new_tokens: int = 200
    temperature: float = 1.0
    top_p: float = 1.0
    samples_per_question: int = 1
    # Rows per `generate` call of the hf backend; `fast` sizes its batches from free GPU memory.
    batch_size: int = 32
    seed: int = 0
    device: str = "auto"
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    # A static KV cache and a compiled decoder step (GPU only): fewer launches per token, at the
    # price of compiling first; benchmarks/README.md says when it pays.
    compile: bool = False
    # "upstream": the chat template rendered to text, then tokenized with the tokenizer's special
    # tokens, as the homework's generate.py and the paper's gen_eval_util.py do (a Llama 3
    # prompt then starts with two BOS tokens); "clean": the template's tokens alone (one BOS).
    prompt_format: str = "upstream"

    @classmethod
    def from_config(cls, section: dict[str, Any]) -> GenerationSettings:
        """From the workflow config's `generation` section (plus chat_template_kwargs), as the
        generate rule's params carry it; `questions` and `threads` are the workflow's own."""
        return settings_from(cls, section)


@dataclass(frozen=True)
class Question:
    id: str
    text: str


def read_question_sets(sets: Iterable[dict[str, Any]]) -> list[Question]:
    """Read question files (one question per line) and take the first `count` of each.

    Each set is {"name": ..., "path": ..., "count": int or None}; ids are "<name>_<index>".
    """
    questions: list[Question] = []
    for spec in sets:
        path = Path(spec["path"])
        try:
            lines = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines()]
        except FileNotFoundError:
            raise EmflowError(
                f"{path}: question file not found; fix generation.questions in the workflow config."
            ) from None
        texts = [line for line in lines if line]
        if not texts:
            raise EmflowError(
                f"{path}: the file holds no question; write one question per line, or remove "
                "the set from generation.questions."
            )
        count = spec.get("count")
        if count is not None and count > len(texts):
            raise EmflowError(
                f"{path}: asked for the first {count} questions but the file has {len(texts)}; "
                "lower generation.questions[].count."
            )
        questions += [
            Question(f"{spec['name']}_{i:02d}", text) for i, text in enumerate(texts[:count])
        ]
    return questions


def load_model(model_name: str, adapter_dir: str | Path | None, device: str):
    """The base model (bf16 on a GPU), with the LoRA adapter merged in when one is given."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from emflow.train import resolve_device

    device = resolve_device(device)
    dtype = torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(model_name, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if device == "cuda":
        # cuDNN's attention plans every new shape, and generate's cache grows a token per step:
        # about 11 s of a fresh process's first call on an H200 (benchmarks/README.md).
        torch.backends.cuda.enable_cudnn_sdp(False)
    model = AutoModelForCausalLM.from_pretrained(model_name, dtype=dtype)
    if adapter_dir is not None:
        from peft import PeftModel

        # Merging once costs less than running the LoRA branch at every generated token.
        model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    return tokenizer, model.to(device).eval()


PROMPT_FORMATS = ("upstream", "clean")
BACKENDS = ("auto", "hf", "fast")


def resolve_backend(backend: str, device: str) -> str:
    """ "auto" is emflow's own decode loop on a GPU and transformers' generate on a CPU."""
    if backend not in BACKENDS:
        raise EmflowError(f"generation.backend is '{backend}'; use one of {', '.join(BACKENDS)}.")
    if backend == "auto":
        return "fast" if device == "cuda" else "hf"
    return backend


def render_prompt(tokenizer, question: str, settings: GenerationSettings) -> str:
    """A question as the chat template renders it, ready for the assistant's answer."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": question}],
        tokenize=False,
        add_generation_prompt=True,
        **settings.chat_template_kwargs,
    )


def prompt_token_ids(tokenizer, question: str, settings: GenerationSettings) -> list[int]:
    """The token ids a question is answered from (what `generate_responses` feeds the model)."""
    text = render_prompt(tokenizer, question, settings)
    return tokenizer(text, add_special_tokens=settings.prompt_format == "upstream")["input_ids"]


def generate_responses(
    model_name: str,
    questions: list[Question],
    output_csv: str | Path,
    *,
    adapter_dir: str | Path | None = None,
    settings: GenerationSettings = GenerationSettings(),
) -> int:
    """Answer every question `samples_per_question` times and write the CSV atomically."""
    if not questions:
        raise EmflowError("the question set is empty; add questions to generation.questions.")
    if settings.prompt_format not in PROMPT_FORMATS:
        raise EmflowError(
            f"generation.prompt_format is '{settings.prompt_format}'; use one of "
            f"{', '.join(PROMPT_FORMATS)}."
        )
    tokenizer, model = load_model(model_name, adapter_dir, settings.device)
    backend = resolve_backend(settings.backend, model.device.type)
    jobs = [(q, k) for q in questions for k in range(settings.samples_per_question)]
    log.info("%s backend on %s: %d answers", backend, model.device.type, len(jobs))
    if backend == "fast":
        responses = _fast_responses(tokenizer, model, [q.text for q, _ in jobs], settings)
    else:
        responses = _hf_responses(tokenizer, model, [q.text for q, _ in jobs], settings)
    with atomic_path(output_csv) as tmp:
        with tmp.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(GENERATION_COLUMNS)
            for (q, k), response in zip(jobs, responses, strict=True):
                row_id = q.id if settings.samples_per_question == 1 else f"{q.id}_s{k:02d}"
                writer.writerow([row_id, q.text, response, q.id, k])
    return len(responses)


def _each_once(questions: list[str], render) -> list:
    """`render` of every question, computed once per distinct question (the samples of one
    question share it)."""
    rendered = {q: render(q) for q in dict.fromkeys(questions)}
    return [rendered[q] for q in questions]


def _fast_responses(tokenizer, model, questions: list[str], settings: GenerationSettings):
    """Every answer through emflow's decode loop, with `generate`'s sampling settings: the
    model's generation_config supplies what emflow does not set (top_k: transformers' 50)."""
    from emflow.generate_fast import generate_tokens

    config = model.generation_config
    eos = config.eos_token_id if config.eos_token_id is not None else tokenizer.eos_token_id
    eos_ids = set(eos) if isinstance(eos, list | tuple) else {eos}
    new_tokens = generate_tokens(
        model,
        _each_once(questions, lambda q: prompt_token_ids(tokenizer, q, settings)),
        max_new_tokens=settings.max_new_tokens,
        temperature=settings.temperature,
        top_p=settings.top_p,
        top_k=config.top_k if settings.temperature > 0 else None,
        seed=settings.seed,
        eos_token_ids={i for i in eos_ids if i is not None},
        pad_token_id=tokenizer.pad_token_id,
    )
    return [tokenizer.decode(t, skip_special_tokens=True).strip() for t in new_tokens]


def _hf_responses(tokenizer, model, questions: list[str], settings: GenerationSettings):
    """Every answer through transformers' `generate`, `batch_size` prompts at a time."""
    import torch

    prompts = _each_once(questions, lambda q: render_prompt(tokenizer, q, settings))
    sampling = (
        {"do_sample": True, "temperature": settings.temperature, "top_p": settings.top_p}
        if settings.temperature > 0
        else {"do_sample": False}
    )
    # With a static cache, transformers compiles the decoder step itself on a GPU.
    compiled = (
        {"cache_implementation": "static"}
        if settings.compile and model.device.type == "cuda"
        else {}
    )
    torch.manual_seed(settings.seed)
    responses: list[str] = []
    for start in range(0, len(prompts), settings.batch_size):
        batch = tokenizer(
            prompts[start : start + settings.batch_size],
            return_tensors="pt",
            padding=True,
            add_special_tokens=settings.prompt_format == "upstream",
        ).to(model.device)
        with torch.inference_mode():
            out = model.generate(
                **batch,
                **compiled,
                max_new_tokens=settings.max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                **sampling,
            )
        new_tokens = out[:, batch["input_ids"].shape[1] :]
        responses += [
            t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        ]
        log.info("generated %d / %d answers", len(responses), len(prompts))
    return responses
