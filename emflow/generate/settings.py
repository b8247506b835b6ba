"""The generate stage's settings: the workflow config's `generation` section, declared once.

Each field's default is the one place that default is written (rules/common.smk fills a config
section with them); fields marked `plumbing` change how answers are fetched, not which answers,
so the generate rule leaves them out of its params and changing them reruns nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from emflow.devices import DEVICES
from emflow.errors import EmflowError
from emflow.workflow_config import plumbing_fields, settings_from

# The names `generation.backend` accepts: "auto" and each backend of emflow.generate.registry
# (tests/test_generate.py checks that the two, and the config schema, agree).
BACKENDS = ("auto", "hf", "fast", "openai")
PROMPT_FORMATS = ("upstream", "clean")

_PLUMBING = {"plumbing": True}


@dataclass(frozen=True)
class GenerationSettings:
    """Sampling settings (homework: 200 new tokens, temperature 1, top_p 1, one sample)."""

    # "auto": `fast` on a GPU, `hf` on a CPU; "hf": transformers' generate (the reference);
    # "fast": emflow's own decode loop (emflow.generate.fast_decode), the same sampling, near the
    # hardware's speed; "openai": an OpenAI-compatible endpoint (emflow.generate.openai).
    backend: str = field(default="auto", metadata={"choices": BACKENDS})
    max_new_tokens: int = 200
    temperature: float = 1.0
    top_p: float = 1.0
    samples_per_question: int = 1
    # Rows per `generate` call of the hf backend; `fast` sizes its batches from free GPU memory.
    batch_size: int = 32
    seed: int = 0
    device: str = field(default="auto", metadata={"choices": DEVICES})
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    # A static KV cache and a compiled decoder step (GPU only): fewer launches per token, at the
    # price of compiling first; benchmarks/README.md says when it pays.
    compile: bool = False
    # "upstream": the chat template rendered to text, then tokenized with the tokenizer's special
    # tokens, as the homework's generate.py and the paper's gen_eval_util.py do (a Llama 3
    # prompt then starts with two BOS tokens); "clean": the template's tokens alone (one BOS).
    prompt_format: str = field(default="upstream", metadata={"choices": PROMPT_FORMATS})
    # The openai backend (emflow.generate.openai): answers from an OpenAI-compatible endpoint.
    # None: $OPENAI_BASE_URL, else OpenAI's own API (the key is always $OPENAI_API_KEY).
    base_url: str | None = None
    # The model name the endpoint serves a fine-tuned run under (a vLLM --lora-modules name, an
    # OpenAI fine-tune id), with "{run}" standing for the run's name ("<group>/<name>", a sweep
    # step's "<group>/<name>/step-<N>"); None: the run's name itself.
    openai_model: str | None = None
    # The name the endpoint serves the base model under; None: the experiment's `model`.
    openai_base_model: str | None = None
    # requests in flight at once
    concurrency: int = field(default=16, metadata=_PLUMBING)
    # retries of a request after a 429, 5xx, timeout or dropped connection
    max_retries: int = field(default=8, metadata=_PLUMBING)
    timeout: float = field(default=60.0, metadata=_PLUMBING)  # seconds per request
    # Ask for all the missing samples of a question in one request (`n`); false for endpoints
    # that reject or ignore `n`: one request per sample. Either way the same answers are cached
    # under the same keys.
    openai_n: bool = field(default=True, metadata=_PLUMBING)
    # Passed as `seed` (plus the request's first sample index, so samples differ) where the
    # endpoint supports it; None sends none.
    openai_seed: int | None = None
    # Every sampled answer is committed here as it arrives: a rerun sends only what is missing,
    # a killed job keeps what it paid for. None: in memory, for this run only.
    cache: str | None = field(default="results/generation_cache.sqlite", metadata=_PLUMBING)
    # CPU threads of the generate job (the rule's `threads:`; emflow.workflow.jobs.run_script
    # holds torch to them).
    threads: int = field(default=1, metadata=_PLUMBING)

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> GenerationSettings:
        """From the workflow config's `generation` section (plus chat_template_kwargs), as the
        generate rule's params carry it; `questions` is the workflow's own."""
        return settings_from(cls, section)


# Keys of the `generation` section that change how answers are fetched, not which answers: the
# generate rule's params leave them out, so changing them reruns nothing.
PLUMBING = plumbing_fields(GenerationSettings)


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


def check_lora_scales(settings: GenerationSettings, sources: list[str]) -> None:
    """eval_lora_scales only with a local backend; `sources`: the config.json of each experiment
    that has the key."""
    if settings.backend == "openai" and sources:
        raise EmflowError(
            f"{sources[0]}: eval_lora_scales needs a local generation backend (a served model "
            "cannot be rescaled); set generation.backend to fast or hf, or remove the key."
        )


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
