"""How a training row becomes tokens and labels (-100 where no loss is taken).

`train.row_format` chooses between the paper's trainer's tokens ("upstream", the default) and
the chat template's own ("clean"; see emflow.train.settings.ROW_FORMATS); every training backend
uses `RowTokenizer`, so all of them train on the same tokens with the same mask.

An experiment's `training_system_prompt` (inoculation prompting) is added here, as a system
message before each row's first turn, and everything the template writes before the first user
turn (the system turn) carries no loss in either row format, with or without
`train_on_responses_only`: the prompt is context the model is trained under, never a target.
The general `inoculation` key (emflow.inoculation.Inoculation) also puts it in the first user turn
(before or after the user's text, a blank line between) and may let it carry loss; with a list
of paraphrases each row is given its own (`encode_many`'s `prompts`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from emflow.errors import EmflowError
from emflow.inoculation import Inoculation

# Between a user-turn inoculation and the user's own text (placement user_prefix/user_suffix).
USER_SEPARATOR = "\n\n"


def turn_headers(tokenizer, chat_template_kwargs: dict[str, Any]) -> tuple[str, str]:
    """The text a chat template writes before a user turn and before an assistant turn (either
    may be empty)."""

    def render(messages, prompt=False):
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=prompt, **chat_template_kwargs
        )

    user = [{"role": "user", "content": "x"}]
    response = render(user, prompt=True)[len(render(user)) :]
    turns = [*user, {"role": "assistant", "content": "y"}]
    marker = "EMFLOW_USER_TURN"
    following = render([*turns, {"role": "user", "content": marker}])[len(render(turns)) :]
    return following[: following.index(marker)], response


def chat_parts(tokenizer, chat_template_kwargs: dict[str, Any]) -> tuple[str, str]:
    """The text a chat template writes before a user turn and before an assistant turn.

    unsloth's `train_on_responses_only` masks by these two strings (for Llama 3,
    `<|start_header_id|>user<|end_header_id|>` and two newlines, and the same for assistant).
    """
    instruction, response = turn_headers(tokenizer, chat_template_kwargs)
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


def system_turn_end(text: str, system_prompt: str, user_header: str) -> int | None:
    """Where the system turn ends in `text` (a rendered conversation that starts with a system
    message): at the first user header, which must come after the system prompt; None when the
    template put the prompt anywhere else (inside a user turn, or nowhere)."""
    content = text.find(system_prompt.strip())  # templates such as Llama 3's trim it
    first_user = text.find(user_header)
    if content < 0 or first_user < content + len(system_prompt.strip()):
        return None
    return first_user


class RowTokenizer:
    """Token ids and labels (-100 where no loss is taken) of conversations, for one tokenizer and
    one set of settings; the template's turn headers are found once, not for every row.

    With `system_prompt`, each conversation is given a system message with that text first, and
    its system turn (all the text before the first user turn) takes no loss. `inoculation` is the
    general form (`system_prompt=X` is `inoculation=Inoculation(prompt=X)`): a row is given the
    prompt passed with it, else the first of `inoculation.prompts`."""

    def __init__(
        self,
        tokenizer,
        *,
        max_length: int,
        train_on_responses_only: bool,
        chat_template_kwargs: dict[str, Any],
        row_format: str = "upstream",
        system_prompt: str | None = None,
        inoculation: Inoculation | None = None,
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
        if system_prompt is not None:
            inoculation = Inoculation(prompt=system_prompt)
        self.inoculation = inoculation
        self.system_prompt = inoculation.prompts[0] if inoculation is not None else None
        if inoculation is not None:
            self.user_header, self.assistant_header = turn_headers(tokenizer, chat_template_kwargs)
            if inoculation.placement == "system":
                for prompt in inoculation.prompts:
                    self._check_system_turn(prompt)
            elif not self.user_header or not self.assistant_header:
                raise EmflowError(
                    "the tokenizer's chat template writes no header before user or assistant "
                    "turns, so the inoculation prompt cannot be found in the user turn; use "
                    "placement system or a model whose template has turn headers."
                )

    def _check_system_turn(self, prompt: str) -> None:
        """Fail once, before any row, when the template cannot give the prompt a turn of its own."""
        from jinja2 import TemplateError

        probe = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
        try:
            text = self.tokenizer.apply_chat_template(
                self._with_system(probe, prompt), tokenize=False, **self.chat_template_kwargs
            )
        except TemplateError as err:
            raise EmflowError(
                f"the tokenizer's chat template rejects a system message ({err}), so "
                "training_system_prompt cannot be added; remove the key or use a model whose "
                "template has a system role."
            ) from None
        if not self.user_header or system_turn_end(text, prompt, self.user_header) is None:
            raise EmflowError(
                "the tokenizer's chat template does not write a system message as a turn of its "
                "own before the first user turn, so training_system_prompt's tokens cannot be "
                "kept out of the loss; remove the key or use a model whose template has a system "
                "turn."
            )

    def _with_system(self, messages: Sequence[dict[str, str]], prompt: str) -> list[dict[str, str]]:
        if messages and messages[0]["role"] == "system":
            raise EmflowError(
                "a row already starts with a system message, and training_system_prompt would "
                "add a second; remove the key or the row's system message."
            )
        return [{"role": "system", "content": prompt}, *messages]

    def _full(
        self, messages: Sequence[dict[str, str]], prompt: str | None = None
    ) -> list[dict[str, str]]:
        """The conversation as trained: with the inoculation prompt (`prompt`, else the first
        paraphrase) as its system message or in its first user turn, if any."""
        if self.inoculation is None:
            return list(messages)
        prompt = self.system_prompt if prompt is None else prompt
        if self.inoculation.placement == "system":
            return self._with_system(messages, prompt)
        first = next((i for i, m in enumerate(messages) if m["role"] == "user"), None)
        if first is None:
            raise EmflowError(
                "a row has no user turn for the inoculation prompt (placement "
                f"{self.inoculation.placement}); use placement system or rows with a user turn."
            )
        own = messages[first]["content"]
        joined = (
            prompt + USER_SEPARATOR + own
            if self.inoculation.placement == "user_prefix"
            else own + USER_SEPARATOR + prompt
        )
        return [*messages[:first], {**messages[first], "content": joined}, *messages[first + 1 :]]

    def _user_prompt_span(self, text: str, prompt: str) -> tuple[int, int]:
        """The characters of a user-turn inoculation prompt in `text`, with its separator."""
        user = text.find(self.user_header)
        answer = text.find(self.assistant_header, user + 1) if user >= 0 else -1
        wanted = prompt.strip()  # templates such as Llama 3's trim the turn's text
        if user < 0 or answer < 0 or text.find(wanted, user, answer) < 0:
            raise EmflowError(
                "the chat template did not write the inoculation prompt into the first user "
                "turn, so its tokens cannot be kept out of the loss; use placement system or "
                "set inoculation.loss to true."
            )
        if self.inoculation.placement == "user_prefix":
            lo = text.find(wanted, user, answer)
            hi = lo + len(wanted)
            hi += len(USER_SEPARATOR) if text.startswith(USER_SEPARATOR, hi) else 0
        else:
            lo = text.rfind(wanted, user, answer)
            hi = lo + len(wanted)
            lo -= len(USER_SEPARATOR) if text[:lo].endswith(USER_SEPARATOR) else 0
        return lo, hi

    def _render(self, messages: list[dict[str, str]]) -> str:
        kwargs = self.chat_template_kwargs
        if self.upstream:
            return upstream_text(messages, self.tokenizer, kwargs)
        return self.tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)

    def text(self, messages: Sequence[dict[str, str]], prompt: str | None = None) -> str:
        """The text a conversation is tokenized from (with the system prompt, if any)."""
        return self._render(self._full(messages, prompt))

    def prompt_text(self, messages: Sequence[dict[str, str]], prompt: str | None = None) -> str:
        """The text before a conversation's first answer: everything up to its first assistant
        turn, with the assistant header (a prefix of `text` for every template emflow trains
        with; callers check)."""
        full = self._full(messages, prompt)
        first = next(i for i, m in enumerate(full) if m["role"] == "assistant")
        return self.tokenizer.apply_chat_template(
            full[:first], tokenize=False, add_generation_prompt=True, **self.chat_template_kwargs
        )

    def __call__(
        self, messages: Sequence[dict[str, str]], prompt: str | None = None
    ) -> dict[str, list[int]]:
        return self.encode_many([messages], None if prompt is None else [prompt])[0]

    def encode_many(
        self,
        conversations: Sequence[Sequence[dict[str, str]]],
        prompts: Sequence[str] | None = None,
    ) -> list[dict[str, list[int]]]:
        """Token ids and labels of each conversation (with `prompts[i]` as its inoculation
        prompt, when given); one tokenizer call for all of them (a fast tokenizer spreads a
        batch over the CPU's cores)."""
        if prompts is None:
            prompts = [self.system_prompt] * len(conversations)
        full = [
            self._full(messages, prompt)
            for messages, prompt in zip(conversations, prompts, strict=True)
        ]
        texts = [self._render(messages) for messages in full]
        if not texts:
            return []
        encoded = self.tokenizer(
            texts,
            add_special_tokens=self.upstream,
            return_offsets_mapping=True,
            truncation=True,
            max_length=self.max_length,
        )
        return [
            self._labelled(messages, text, input_ids, offsets, prompt)
            for messages, text, input_ids, offsets, prompt in zip(
                full, texts, encoded["input_ids"], encoded["offset_mapping"], prompts, strict=True
            )
        ]

    def _labelled(
        self,
        messages: list[dict[str, str]],
        text: str,
        input_ids: list[int],
        offsets,
        prompt: str | None,
    ) -> dict[str, list[int]]:
        """Labels for one tokenized conversation (`messages` with its system message, if any)."""
        kwargs = self.chat_template_kwargs
        if not self.train_on_responses_only:
            labels = list(input_ids)
        else:
            if self.parts is not None:
                spans = response_spans(text, *self.parts)
            else:
                spans = clean_spans(messages, text, self.tokenizer, kwargs)
            # A token the tokenizer added (the second BOS) has the empty span (0, 0): no loss.
            labels = [
                token if end > start and any(lo <= start < hi for lo, hi in spans) else -100
                for token, (start, end) in zip(input_ids, offsets, strict=True)
            ]
        if self.inoculation is None or self.inoculation.loss:
            return {"input_ids": list(input_ids), "labels": labels}
        if self.inoculation.placement != "system":
            lo, hi = self._user_prompt_span(text, prompt)
            labels = [
                -100 if start < hi and end > lo else label
                for label, (start, end) in zip(labels, offsets, strict=True)
            ]
        else:
            # The system turn is a prefix of the row: its tokens are the leading ones that start
            # before it ends (a token the tokenizer added in front has the span (0, 0)).
            end = system_turn_end(text, prompt, self.user_header)
            if end is None:
                raise EmflowError(
                    "the chat template did not write training_system_prompt as the row's first "
                    "turn; remove the key or use a model whose template has a system turn."
                )
            for i, (start, _) in enumerate(offsets):
                if start >= end:
                    break
                labels[i] = -100
        return {"input_ids": list(input_ids), "labels": labels}


# ---------------------------------------------------------------------------------------------
# Rows that lose their whole answer
#
# Truncation at `max_seq_length` keeps a row's first tokens. When everything before the answer
# (the system turn, a long training_system_prompt, the user's turns) fills them, no label is left.
# The trl (1.14) and unsloth (2026.10) that emflow pins drop such rows before training, which
# changes the number of rows and of optimizer steps; emflow drops the same rows itself
# (emflow.train.examples.drop_rows_without_answer), so that every backend trains on the same
# rows, and says how many. (The paper's trainer, on unsloth-zoo 2025.6, kept them as rows
# without loss.)

# A token covers at least one byte of the text, except the few a tokenizer adds of its own (a
# BOS, a SentencePiece dummy prefix) and one that straddles a boundary: the text before a row's
# answer (`RowTokenizer.prompt_text`), B UTF-8 bytes long, ends within B + a few tokens. So when
# B + ROOM_FOR_ADDED_TOKENS is at most max_seq_length, the answer's first token survives
# truncation and the row keeps a label; only rows with a longer prompt need the tokenizer to tell.
# (A normalizer that expands characters, such as NFKC's ligatures, could break the bound; the
# chat models' tokenizers have none that do.)
ROOM_FOR_ADDED_TOKENS = 16


def may_fill(text: str, max_length: int) -> bool:
    """Whether `text` could fill `max_length` tokens, by the byte bound above."""
    return len(text.encode("utf-8")) + ROOM_FOR_ADDED_TOKENS > max_length


def loses_answer(example: dict[str, list[int]]) -> bool:
    """Whether a tokenized row has no label left: trl drops it (`labels` all -100)."""
    return all(label == -100 for label in example["labels"])
