"""The train stage's workflow settings (the workflow config's `train` section): the one place
their defaults are written. The experiment's own keys live in emflow.config.ExperimentConfig."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from emflow.workflow_config import settings_from

BACKENDS = ("auto", "hf", "fast", "unsloth")
DEVICES = ("auto", "cpu", "cuda")

# How a training row becomes tokens (`train.row_format`, emflow.train.rows):
# - "upstream", the paper's trainer (em_organism_dir/finetune/sft/util/trainer.py): the chat
#   template with add_generation_prompt=True, so an empty assistant header follows the last turn,
#   then the EOS token; tokenized with the tokenizer's special tokens, so a template that writes
#   its own BOS gets a second one (unsloth-zoo 2025.6's check for an existing BOS reads one
#   character); with train_on_responses_only, unsloth's mask: loss from after each assistant
#   header up to the next user header, or to the end of the row.
# - "clean": the conversation as the chat template renders it, one BOS, and loss on each
#   assistant turn's content and its end-of-turn token.
ROW_FORMATS = ("upstream", "clean")


@dataclass(frozen=True)
class TrainSettings:
    """Workflow-level training settings; every field but the plumbing ones is in the train
    rule's params, so changing it retrains."""

    # "auto" (fast on a GPU, hf on a CPU), "hf", "fast" or "unsloth".
    backend: str = field(default="auto", metadata={"choices": BACKENDS})
    device: str = field(default="auto", metadata={"choices": DEVICES})
    # Template variables, e.g. {"date_string": "26 Jul 2024"}: Llama 3's template writes today's
    # date into every prompt unless it is pinned, so unpinned data changes from day to day.
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    gradient_checkpointing: bool = False
    # Not plumbing, although the adapter does not depend on it: a changed tracker retrains, which
    # is how a finished run's logs get into the new one (and what the rule's params always did).
    report_to: tuple[str, ...] = ()
    # "upstream" (the paper's trainer's tokens and loss mask) or "clean"; see ROW_FORMATS.
    row_format: str = field(default="upstream", metadata={"choices": ROW_FORMATS})
    # CPU threads of the train job (the rule's `threads:`).
    threads: int = field(default=1, metadata={"plumbing": True})

    @classmethod
    def from_config(cls, section: dict[str, Any]) -> TrainSettings:
        """From the workflow config's `train` section (plus chat_template_kwargs), as the train
        rule's params carry it."""
        settings = settings_from(cls, section)
        return replace(settings, report_to=tuple(settings.report_to))

    def fingerprint_params(self) -> dict[str, Any]:
        """The settings a resumable checkpoint must share with the run that resumes it (the
        backend is added as resolved)."""
        return {
            "chat_template_kwargs": dict(sorted(self.chat_template_kwargs.items())),
            "gradient_checkpointing": self.gradient_checkpointing,
            "row_format": self.row_format,
        }
