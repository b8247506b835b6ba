"""How a training row becomes tokens and labels (-100 where no loss is taken).

`train.row_format` chooses between the paper's trainer's tokens ("upstream", the default) and
the chat template's own ("clean"); every training backend uses `tokenize_conversation`, so all
of them train on the same tokens with the same mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from emflow.errors import EmflowError

# How a training row becomes tokens (`train.row_format`):
# - "upstream", the paper's trainer (em_organism_dir/finetune/sft/util/trainer.py): the chat
#   template with add_generation_prompt=True, so an empty assistant header follows the last turn,
#   then the EOS token; tokenized with the tokenizer's special tokens, so a template that writes
#   its own BOS gets a second one (unsloth-zoo 2025.6's check for an existing BOS reads one
#   character); with train_on_responses_only, unsloth's mask: loss from after each assistant
#   header up to the next user header, or to the end of the row.
# - "clean": the conversation as the chat template renders it, one BOS, and loss on each
#   assistant turn's content and its end-of-turn token.
ROW_FORMATS = ("upstream", "clean")


def chat_parts(tokenizer, chat_template_kwargs: dict[str, Any]) -> tuple[str, str]:
    """The text a chat template writes before a user turn and before an assistant turn.

    unsloth's `train_on_responses_only` masks by these two strings (for Llama 3,
    `<|start_header_id|>user<|end_header_id|>` and two newlines, and the same for assistant).
    """

    def render(messages, prompt=False):
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=prompt, **chat_template_kwargs
        )

    user = [{"role": "user", "content": "x"}]
    response = render(user, prompt=True)[len(render(user)) :]
    turns = [*user, {"role": "assistant", "content": "y"}]
    marker = "EMFLOW_USER_TURN"
    following = render([*turns, {"role": "user", "content": marker}])[len(render(turns)) :]
    instruction = following[: following.index(marker)]
    if not response or not instruction:
        raise EmflowError(
            "the tokenizer's chat template writes no header before user or assistant turns, so "
            "unsloth's response-only mask has nothing to find; set train_on_responses_only to "
            "false or train.row_format to clean."
        )
    return instruction, response


def upstream_text(
    messages: Sequence[dict[str, str]], tokenizer, chat_template_kwargs: dict[str, Any]
) -> str:
    """The paper's training text for a conversation: the template with the generation prompt,
    then the EOS token."""
    text = tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=True, **chat_template_kwargs
    )
    return text + tokenizer.eos_token


def response_spans(text: str, instruction: str, response: str) -> list[tuple[int, int]]:
    """The character spans unsloth's `train_on_responses_only` keeps: after each assistant
    header (`response`), up to the next user header (`instruction`) or the end of the text."""
    spans, at = [], 0
    while (header := text.find(response, at)) >= 0:
        start = header + len(response)
        end = text.find(instruction, start)
        end = len(text) if end < 0 else end
        spans.append((start, end))
        at = end
    return spans


def clean_spans(
    messages: Sequence[dict[str, str]],
    text: str,
    tokenizer,
    chat_template_kwargs: dict[str, Any],
) -> list[tuple[int, int]]:
    """The character spans of each assistant turn in `text`, the conversation as the template
    renders it: from the end of the assistant header to the end of the turn (its end-of-turn
    token included)."""
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = tokenizer.apply_chat_template(
            list(messages[:i]), tokenize=False, add_generation_prompt=True, **chat_template_kwargs
        )
        turn = tokenizer.apply_chat_template(
            list(messages[: i + 1]), tokenize=False, **chat_template_kwargs
        )
        if not (text.startswith(prompt) and text.startswith(turn)):
            raise EmflowError(
                "the tokenizer's chat template renders a conversation's prefix differently from "
                "the whole conversation, so the assistant's tokens cannot be found; set "
                "train_on_responses_only to false or use a template that renders prefixes stably."
            )
        spans.append((len(prompt), len(turn)))
    return spans


class RowTokenizer:
    """Token ids and labels (-100 where no loss is taken) of conversations, for one tokenizer and
    one set of settings; the template's turn headers are found once, not for every row."""

    def __init__(
        self,
        tokenizer,
        *,
        max_length: int,
        train_on_responses_only: bool,
        chat_template_kwargs: dict[str, Any],
        row_format: str = "upstream",
    ):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.train_on_responses_only = train_on_responses_only
        self.chat_template_kwargs = chat_template_kwargs
        self.upstream = row_format == "upstream"
        # unsloth's mask needs the template's user and assistant headers.
        self.parts = (
            chat_parts(tokenizer, chat_template_kwargs)
            if self.upstream and train_on_responses_only
            else None
        )

    def __call__(self, messages: Sequence[dict[str, str]]) -> dict[str, list[int]]:
        kwargs = self.chat_template_kwargs
        if self.upstream:
            text = upstream_text(messages, self.tokenizer, kwargs)
        else:
            text = self.tokenizer.apply_chat_template(list(messages), tokenize=False, **kwargs)
        encoded = self.tokenizer(
            text,
            add_special_tokens=self.upstream,
            return_offsets_mapping=True,
            truncation=True,
            max_length=self.max_length,
        )
        input_ids = encoded["input_ids"]
        if not self.train_on_responses_only:
            return {"input_ids": input_ids, "labels": list(input_ids)}
        if self.parts is not None:
            spans = response_spans(text, *self.parts)
        else:
            spans = clean_spans(messages, text, self.tokenizer, kwargs)
        # A token the tokenizer added (the second BOS) has the empty span (0, 0): no loss.
        labels = [
            token if end > start and any(lo <= start < hi for lo, hi in spans) else -100
            for token, (start, end) in zip(input_ids, encoded["offset_mapping"], strict=True)
        ]
        return {"input_ids": input_ids, "labels": labels}


def tokenize_conversation(
    messages: Sequence[dict[str, str]], tokenizer, **settings: Any
) -> dict[str, list[int]]:
    """Token ids and labels for one conversation (`settings`: those of `RowTokenizer`)."""
    return RowTokenizer(tokenizer, **settings)(messages)
