"""The `inoculation` key of an experiment's config.json (emflow's own): the instruction each
training and held-out row is trained under, its model (`Inoculation`) and its checks against the
config's other keys. emflow.config's ExperimentConfig holds it; emflow.train.rows renders it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator

INOCULATION_PLACEMENTS = ("system", "user_prefix", "user_suffix")


class Inoculation(BaseModel):
    """An experiment's `inoculation` key (emflow's own; emflow.train.rows renders it): the
    instruction each training and held-out row is trained under.

    `prompt`: the text, or a list of paraphrases (each row draws one, seeded by the run's seed).
    `placement`: "system" (a system message before the first turn, as `training_system_prompt`
    adds), "user_prefix" or "user_suffix" (joined to the first user turn's text with a blank
    line, the instruction in the user turn as Wichers et al. 2025 place it). `loss`: false (the
    default), the instruction's tokens never carry loss; true, they are trained on as the rest of
    the row's prompt is, which needs `train_on_responses_only` false."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str | list[str]
    placement: Literal["system", "user_prefix", "user_suffix"] = "system"
    loss: bool = False

    @property
    def prompts(self) -> list[str]:
        """The paraphrases a row draws from (one for a single prompt)."""
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    @model_validator(mode="after")
    def _prompts_have_text(self) -> Inoculation:
        if isinstance(self.prompt, list) and not self.prompt:
            raise ValueError(
                "'inoculation.prompt' is an empty list; give the prompt's text or a list of "
                "paraphrases"
            )
        if any(not p.strip() for p in self.prompts):
            raise ValueError("'inoculation.prompt' holds an empty prompt; give each prompt's text")
        return self


def check_inoculation(
    inoculation: Inoculation | None,
    *,
    training_system_prompt: str | None,
    train_on_responses_only: bool,
) -> None:
    """The `inoculation` key against the config's other keys (ValueError: pydantic's validator
    of ExperimentConfig reports it with the config's file)."""
    if inoculation is None:
        return
    if training_system_prompt is not None:
        raise ValueError(
            "give 'training_system_prompt' or 'inoculation', not both; "
            "move the prompt into inoculation.prompt"
        )
    if inoculation.loss and train_on_responses_only:
        raise ValueError(
            "'inoculation.loss' is true, but train_on_responses_only keeps every prompt token "
            "out of the loss, so the instruction could carry none; set inoculation.loss to "
            "false or train_on_responses_only to false"
        )
