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


def upstream_row(
    messages: Sequence[dict[str, str]], tokenizer, chat_template_kwargs: dict[str, Any]
) -> tuple[str, list[tuple[int, int]]]:
    """The paper's training text for a conversation, and the character spans unsloth's
    `train_on_responses_only` keeps: after each assistant header, up to the next user header."""
    text = tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=True, **chat_template_kwargs
    )
    text += tokenizer.eos_token
    instruction, response = chat_parts(tokenizer, chat_template_kwargs)
    spans, at = [], 0
    while (header := text.find(response, at)) >= 0:
        start = header + len(response)
        end = text.find(instruction, start)
        end = len(text) if end < 0 else end
        spans.append((start, end))
        at = end
    return text, spans


def clean_row(
    messages: Sequence[dict[str, str]], tokenizer, chat_template_kwargs: dict[str, Any]
) -> tuple[str, list[tuple[int, int]]]:
    """Render a conversation and return it with the character spans of each assistant turn.

    A span runs from the end of the assistant header to the end of the turn (its end-of-turn
    token included).
    """
    text = tokenizer.apply_chat_template(list(messages), tokenize=False, **chat_template_kwargs)
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
    return text, spans


def tokenize_conversation(
    messages: Sequence[dict[str, str]],
    tokenizer,
    *,
    max_length: int,
    train_on_responses_only: bool,
    chat_template_kwargs: dict[str, Any],
    row_format: str = "upstream",
) -> dict[str, list[int]]:
    """Token ids and labels (-100 where no loss is taken) for one conversation."""
    render = upstream_row if row_format == "upstream" else clean_row
    text, spans = render(messages, tokenizer, chat_template_kwargs)
    encoded = tokenizer(
        text,
        add_special_tokens=row_format == "upstream",
        return_offsets_mapping=True,
        truncation=True,
        max_length=max_length,
    )
    input_ids = encoded["input_ids"]
    if not train_on_responses_only:
        return {"input_ids": input_ids, "labels": list(input_ids)}
    # A token the tokenizer added (the second BOS) has the empty span (0, 0): no loss.
    labels = [
        token if end > start and any(lo <= start < hi for lo, hi in spans) else -100
        for token, (start, end) in zip(input_ids, encoded["offset_mapping"], strict=True)
    ]
    return {"input_ids": input_ids, "labels": labels}
