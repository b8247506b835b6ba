"""Generation: a model (base, or base + LoRA adapter) answers the question sets into a CSV.

The CSV keeps the homework's columns, `id,question,response`, which its grader checks (`question`
is the user turn the model saw, which the judge also sees), and adds after them what groups the
answers: the question's id and set, the paraphrase and sample index, and the system prompt.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from emflow import devices
from emflow.atomic import atomic_path
from emflow.config import settings_from
from emflow.errors import EmflowError
from emflow.questions import Question, read_question_sets

__all__ = ["GenerationOutput", "GenerationSettings", "generate_for_adapters", "read_question_sets"]

log = logging.getLogger("emflow.generate")

GENERATION_COLUMNS = [
    "id",
    "question",
    "response",
    "question_id",
    "question_set",
    "paraphrase",
    "sample",
    "system",
]


@dataclass(frozen=True)
class GenerationSettings:
    """Sampling settings (homework: 200 new tokens, temperature 1, top_p 1, one sample)."""

    # "auto": `fast` on a GPU, `hf` on a CPU; "hf": transformers' generate (the reference);
    # "fast": emflow's own decode loop (emflow.generate.fast), the same sampling, near the
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
    # The openai backend (emflow.generate.openai): answers from an OpenAI-compatible endpoint.
    # None: $OPENAI_BASE_URL, else OpenAI's own API (the key is always $OPENAI_API_KEY).
    base_url: str | None = None
    # The model name the endpoint serves a fine-tuned run under (a vLLM --lora-modules name, an
    # OpenAI fine-tune id), with "{run}" standing for the run's name ("<group>/<name>", a sweep
    # step's "<group>/<name>/step-<N>"); None: the run's name itself.
    openai_model: str | None = None
    # The name the endpoint serves the base model under; None: the experiment's `model`.
    openai_base_model: str | None = None
    concurrency: int = 16  # requests in flight at once
    max_retries: int = 8  # retries of a request after a 429, 5xx, timeout or dropped connection
    timeout: float = 60.0  # seconds per request
    # Ask for all the missing samples of a question in one request (`n`); false for endpoints
    # that reject or ignore `n`: one request per sample.
    openai_n: bool = True
    # Passed as `seed` (plus the request's first sample index, so samples differ) where the
    # endpoint supports it; None sends none.
    openai_seed: int | None = None
    # Every sampled answer is committed here as it arrives: a rerun sends only what is missing,
    # a killed job keeps what it paid for. None: in memory, for this run only.
    cache: str | None = "results/generation_cache.sqlite"

    @classmethod
    def from_config(cls, section: dict[str, Any]) -> GenerationSettings:
        """From the workflow config's `generation` section (plus chat_template_kwargs), as the
        generate rule's params carry it; `questions` and `threads` are the workflow's own."""
        return settings_from(cls, section)


def load_model(model_name: str, device: str):
    """The tokenizer (left padding) and the base model, bf16 on a GPU, ready to generate."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = devices.resolve_device(device, "generation.device")
    dtype = torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(model_name, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if device == "cuda":
        # cuDNN's attention plans every new shape, and generate's cache grows a token per step:
        # about 11 s of a fresh process's first call on an H200 (benchmarks/README.md).
        torch.backends.cuda.enable_cudnn_sdp(False)
    model = AutoModelForCausalLM.from_pretrained(model_name, dtype=dtype)
    return tokenizer, model.to(device).eval()


PROMPT_FORMATS = ("upstream", "clean")
BACKENDS = ("auto", "hf", "fast", "openai")


def resolve_backend(backend: str, device: str) -> str:
    """ "auto" is emflow's own decode loop on a GPU and transformers' generate on a CPU."""
    return devices.resolve_backend(backend, device, BACKENDS, "generation.backend")


Chat = list[dict[str, str]]


def render_prompt(tokenizer, chat: Chat | str, settings: GenerationSettings) -> str:
    """A chat (or one user turn) as the chat template renders it, ready for the answer; a system
    turn goes through the template as the papers' generation code passes it."""
    if isinstance(chat, str):
        chat = [{"role": "user", "content": chat}]
    return tokenizer.apply_chat_template(
        chat,
        tokenize=False,
        add_generation_prompt=True,
        **settings.chat_template_kwargs,
    )


def prompt_token_ids(tokenizer, chat: Chat | str, settings: GenerationSettings) -> list[int]:
    """The token ids a chat is answered from (what `generate_responses` feeds the model)."""
    text = render_prompt(tokenizer, chat, settings)
    return tokenizer(text, add_special_tokens=settings.prompt_format == "upstream")["input_ids"]


def generate_responses(
    model_name: str,
    questions: list[Question],
    output_csv: str | Path,
    *,
    adapter_dir: str | Path | None = None,
    settings: GenerationSettings = GenerationSettings(),
) -> int:
    """Answer every question its `samples` times and write the CSV atomically."""
    outputs = [GenerationOutput(output_csv, adapter_dir)]
    return generate_for_adapters(model_name, questions, outputs, settings=settings)[0]


@dataclass(frozen=True)
class GenerationOutput:
    """One CSV to write, and the LoRA adapter that answers it (None: the base model).

    `served_model`: the name an OpenAI-compatible endpoint serves this adapter under (the openai
    backend only; see `served_model_name`).
    """

    csv: str | Path
    adapter_dir: str | Path | None = None
    served_model: str | None = None


def served_model_name(settings: GenerationSettings, model: str, run: str | None) -> str:
    """The model name the openai backend asks for. The base model (`run` None):
    `generation.openai_base_model`, else the base model's id. A fine-tuned run (or a sweep
    step, "<run>/step-<N>"): `generation.openai_model` with `{run}` filled in, else the run's
    name (serve its adapter under that name, e.g. vLLM's `--lora-modules <run>=<adapter>`)."""
    if run is None:
        return settings.openai_base_model or model
    if settings.openai_model is not None:
        return settings.openai_model.replace("{run}", run)
    return run


def check_served_models(
    settings: GenerationSettings, targets: Mapping[str, tuple[str, str | None]]
) -> None:
    """Two targets never ask the openai backend for the same served model: they would share
    answers (and cache entries), so one of their generations CSVs would be the other's.

    `targets`: {target: (base model id, run or None for the base model)}.
    """
    if settings.backend != "openai":
        return
    asked: dict[str, str] = {}
    for target, (model, run) in targets.items():
        served = served_model_name(settings, model, run)
        if served not in asked:
            asked[served] = target
            continue
        other = asked[served]
        if run is None and other.startswith("base/"):
            fix = (
                "leave generation.openai_base_model unset when experiments use several base "
                "models, so that each is asked for by its own id"
            )
        elif run is not None and settings.openai_model is not None:
            fix = (
                f"put {{run}} in generation.openai_model (it is '{settings.openai_model}'), e.g. "
                "'<org>/{run}', so that each run asks for its own model"
            )
        else:
            fix = "give generation.openai_base_model and generation.openai_model names apart"
        raise EmflowError(
            f"generation.openai_model: targets '{other}' and '{target}' would both ask the "
            f"endpoint for model '{served}' and get the same answers; {fix}."
        )


def generate_for_adapters(
    model_name: str,
    questions: list[Question],
    outputs: Sequence[GenerationOutput],
    *,
    settings: GenerationSettings = GenerationSettings(),
) -> list[int]:
    """Answer the questions once per output with one loaded base model (emflow.generate.adapters).

    Each CSV equals what `generate_responses` writes for that adapter alone; returns the number
    of answers in each.
    """
    if not questions:
        raise EmflowError("the question set is empty; add questions to generation.questions.")
    if settings.prompt_format not in PROMPT_FORMATS:
        raise EmflowError(
            f"generation.prompt_format is '{settings.prompt_format}'; use one of "
            f"{', '.join(PROMPT_FORMATS)}."
        )
    resolve_backend(settings.backend, "cpu")  # an unknown backend fails before any loading
    jobs = [(q, k) for q in questions for k in range(q.samples)]
    if settings.backend == "openai":
        from emflow.generate.openai import openai_responses

        counts = []
        for output in outputs:
            model = output.served_model or served_model_name(settings, model_name, None)
            responses = _by_token_limit(
                jobs,
                settings,
                lambda chats, group, limited, model=model: openai_responses(
                    chats, [k for _, k in group], model, limited
                ),
            )
            _write_generations(output.csv, jobs, responses)
            counts.append(len(responses))
        return counts

    from emflow.generate.adapters import AdapterSwitch

    tokenizer, base = load_model(model_name, settings.device)
    backend = resolve_backend(settings.backend, base.device.type)
    local = _fast_responses if backend == "fast" else _hf_responses
    # Several adapters: each merged in and taken out again; one: merged for good, no copies.
    switch = AdapterSwitch(base, reusable=len(outputs) > 1)
    counts = []
    for output in outputs:
        log.info(
            "%s backend on %s: %d answers from %s",
            backend,
            base.device.type,
            len(jobs),
            output.adapter_dir or model_name,
        )
        with switch.merged_into(output.adapter_dir) as model:
            responses = _by_token_limit(
                jobs,
                settings,
                lambda chats, group, limited, model=model: local(tokenizer, model, chats, limited),
            )
        _write_generations(output.csv, jobs, responses)
        counts.append(len(responses))
    return counts


def _token_limit(question: Question, settings: GenerationSettings) -> int:
    return question.max_new_tokens or settings.max_new_tokens


def _by_token_limit(jobs, settings: GenerationSettings, answer) -> list[str]:
    """`answer(chats, jobs, settings)` once per distinct token limit (a set may set its own),
    with the settings' max_new_tokens set to it, in order of first appearance; the answers back
    in the order of `jobs`. With one limit (the usual case) this is one call over every job."""
    groups: dict[int, list[int]] = {}
    for i, (question, _) in enumerate(jobs):
        groups.setdefault(_token_limit(question, settings), []).append(i)
    responses: list[str] = [""] * len(jobs)
    for limit, indices in groups.items():
        group = [jobs[i] for i in indices]
        chats = [q.messages() for q, _ in group]
        limited = replace(settings, max_new_tokens=limit)
        for i, response in zip(indices, answer(chats, group, limited), strict=True):
            responses[i] = response
    return responses


def _write_generations(output_csv, jobs, responses) -> None:
    with atomic_path(output_csv) as tmp:
        with tmp.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(GENERATION_COLUMNS)
            for (q, k), response in zip(jobs, responses, strict=True):
                writer.writerow(
                    [q.row_id(k), q.text, response, q.id, q.set_name, q.paraphrase, k, q.system]
                )


def _each_once(chats: list[Chat], render) -> list:
    """`render` of every chat, computed once per distinct chat (the samples of one question
    share it)."""
    key = [tuple((turn["role"], turn["content"]) for turn in chat) for chat in chats]
    first = dict(zip(key, chats, strict=True))  # a later duplicate keeps the first key's place
    rendered = {k: render(chat) for k, chat in first.items()}
    return [rendered[k] for k in key]


def _fast_responses(tokenizer, model, chats: list[Chat], settings: GenerationSettings):
    """Every answer through emflow's decode loop, with `generate`'s sampling settings: the
    model's generation_config supplies what emflow does not set (top_k: transformers' 50)."""
    from emflow.generate.fast import generate_tokens

    config = model.generation_config
    eos = config.eos_token_id if config.eos_token_id is not None else tokenizer.eos_token_id
    eos_ids = set(eos) if isinstance(eos, list | tuple) else {eos}
    new_tokens = generate_tokens(
        model,
        _each_once(chats, lambda chat: prompt_token_ids(tokenizer, chat, settings)),
        max_new_tokens=settings.max_new_tokens,
        temperature=settings.temperature,
        top_p=settings.top_p,
        top_k=config.top_k if settings.temperature > 0 else None,
        seed=settings.seed,
        eos_token_ids={i for i in eos_ids if i is not None},
        pad_token_id=tokenizer.pad_token_id,
    )
    return [tokenizer.decode(t, skip_special_tokens=True).strip() for t in new_tokens]


def _hf_responses(tokenizer, model, chats: list[Chat], settings: GenerationSettings):
    """Every answer through transformers' `generate`, `batch_size` prompts at a time."""
    import torch

    prompts = _each_once(chats, lambda chat: render_prompt(tokenizer, chat, settings))
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


# Settings that change how answers are fetched, not which answers: they rerun nothing.
PLUMBING = ("cache", "concurrency", "max_retries", "timeout", "openai_n", "threads")


def generate_job(
    model_name: str,
    run: str | None,
    section: dict[str, Any],
    output_csv: str | Path,
    adapter_dir: str | Path | None = None,
    *,
    step: int | None = None,
    samples: int | None = None,
) -> int:
    """The generate rule's job: `section` is the workflow config's `generation` section (with
    chat_template_kwargs); `run` names the fine-tuned run (None: the base model). For a
    checkpoint of a sweep, `adapter_dir` holds the run's saved steps and `step` picks one;
    `samples` (generation.sweep_samples) then replaces every question's sample count."""
    if step is None:
        settings, questions = _job_inputs(section, samples)
        served = served_model_name(settings, model_name, run)
        output = GenerationOutput(output_csv, adapter_dir, served)
        return generate_for_adapters(model_name, questions, [output], settings=settings)[0]
    return generate_sweep_job(
        model_name, run, section, {step: output_csv}, adapter_dir, samples=samples
    )[0]


def generate_sweep_job(
    model_name: str,
    run: str,
    section: dict[str, Any],
    outputs: dict[int, str | Path],
    step_adapters: str | Path,
    *,
    samples: int | None = None,
) -> list[int]:
    """Answer for each saved step of a run's sweep (`outputs`: step -> CSV) in one process:
    the base model loads once; each step's adapter is `<step_adapters>/step-<N>`."""
    settings, questions = _job_inputs(section, samples)
    missing = [s for s in outputs if not (Path(step_adapters) / f"step-{s}").is_dir()]
    if missing:
        have = sorted(p.name for p in Path(step_adapters).glob("step-*"))
        raise EmflowError(
            f"{step_adapters}: run '{run}' saved no adapter after step {missing[0]} (it has "
            f"{', '.join(have) or 'none'}); evaluate saved steps only (eval_checkpoints)."
        )
    jobs = [
        GenerationOutput(
            csv,
            Path(step_adapters) / f"step-{step}",
            # A checkpoint is served under its target's name: "<run>/step-<N>".
            served_model_name(settings, model_name, f"{run}/step-{step}"),
        )
        for step, csv in outputs.items()
    ]
    return generate_for_adapters(model_name, questions, jobs, settings=settings)


def _job_inputs(section: dict[str, Any], samples: int | None):
    settings = GenerationSettings.from_config(section)
    questions = read_question_sets(
        section["questions"], samples_per_question=settings.samples_per_question
    )
    if samples is not None:
        questions = [replace(q, samples=samples) for q in questions]
    return settings, questions
