"""What passes between the generate stage and a generation backend.

The stage hands a backend the (question, sample) jobs of a question set and the outputs to answer
them for (each a CSV and the adapter or served model behind it); the backend yields the answers
for one output after another, and the stage writes each output's CSV before the next is answered.
Each backend is one module (emflow.generate.hf, .fast, .openai) and one line of
emflow.generate.registry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from emflow.generate.settings import GenerationSettings
from emflow.questions import Question

# One answer to give: a question, and which of its samples (0, 1, ...).
Job = tuple[Question, int]
Chat = list[dict[str, str]]


@dataclass(frozen=True)
class GenerationOutput:
    """One CSV to write, and the LoRA adapter that answers it (None: the base model).

    `served_model`: the name an OpenAI-compatible endpoint serves this adapter under (the openai
    backend only; see `emflow.generate.settings.served_model_name`). `lora_scale`: the adapter's
    LoRA B matrices are multiplied by it before merging (the local backends only).
    """

    csv: str | Path
    adapter_dir: str | Path | None = None
    served_model: str | None = None
    lora_scale: float = 1.0


class GenerationBackend(Protocol):
    """What generate_for_adapters asks of a backend, made as `Backend(model_name, settings)`."""

    def __init__(self, model_name: str, settings: GenerationSettings) -> None: ...

    def answer(self, jobs: list[Job], outputs: Sequence[GenerationOutput]) -> Iterator[list[str]]:
        """For each output in turn, the answers to `jobs` in their order. The next output is
        answered only once the caller has taken (and written) the previous one's answers."""
        ...


def by_token_limit(
    jobs: list[Job],
    settings: GenerationSettings,
    answer: Callable[[list[Chat], list[Job], GenerationSettings], list[str]],
) -> list[str]:
    """`answer(chats, jobs, settings)` once per distinct token limit (a set may set its own),
    with the settings' max_new_tokens set to it, in order of first appearance; the answers back
    in the order of `jobs`. With one limit (the usual case) this is one call over every job."""
    groups: dict[int, list[int]] = {}
    for i, (question, _) in enumerate(jobs):
        groups.setdefault(question.max_new_tokens or settings.max_new_tokens, []).append(i)
    responses: list[str] = [""] * len(jobs)
    for limit, indices in groups.items():
        group = [jobs[i] for i in indices]
        chats = [q.messages() for q, _ in group]
        limited = replace(settings, max_new_tokens=limit)
        for i, response in zip(indices, answer(chats, group, limited), strict=True):
            responses[i] = response
    return responses
