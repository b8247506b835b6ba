"""What the local backends (hf, fast) share: the prompt tokens, the loaded base model, and the
loop that merges each output's adapter into it (emflow.generate.adapters) before answering."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence

from emflow import devices
from emflow.generate.adapters import AdapterSwitch
from emflow.generate.backend import Chat, GenerationOutput, Job, by_token_limit
from emflow.generate.settings import GenerationSettings

log = logging.getLogger("emflow.generate")


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
    """The token ids a chat is answered from (what the hf backend's tokenizer call feeds the
    model): the rendered template, plus the tokenizer's special tokens with `upstream`."""
    text = render_prompt(tokenizer, chat, settings)
    return tokenizer(text, add_special_tokens=settings.prompt_format == "upstream")["input_ids"]


def each_once(chats: list[Chat], render: Callable[[Chat], object]) -> list:
    """`render` of every chat, computed once per distinct chat (the samples of one question
    share it)."""
    key = [tuple((turn["role"], turn["content"]) for turn in chat) for chat in chats]
    first = dict(zip(key, chats, strict=True))  # a later duplicate keeps the first key's place
    rendered = {k: render(chat) for k, chat in first.items()}
    return [rendered[k] for k in key]


class LocalBackend:
    """A backend that runs the model here: the base loads once, and each output's adapter is
    merged into it in turn. A subclass says how a merged model answers (`responses`)."""

    name = ""  # the backend's name in generation.backend, for the log

    def __init__(self, model_name: str, settings: GenerationSettings) -> None:
        self.model_name = model_name
        self.settings = settings

    def answer(self, jobs: list[Job], outputs: Sequence[GenerationOutput]) -> Iterator[list[str]]:
        tokenizer, base = load_model(self.model_name, self.settings.device)
        # Several adapters: each merged in and taken out again; one: merged for good, no copies.
        switch = AdapterSwitch(base, reusable=len(outputs) > 1)
        for output in outputs:
            log.info(
                "%s backend on %s: %d answers from %s",
                self.name,
                base.device.type,
                len(jobs),
                output.adapter_dir or self.model_name,
            )
            with switch.merged_into(output.adapter_dir, output.lora_scale) as model:
                responses = by_token_limit(
                    jobs,
                    self.settings,
                    lambda chats, group, limited, model=model: self.responses(
                        tokenizer, model, chats, limited
                    ),
                )
            yield responses

    def responses(
        self, tokenizer, model, chats: list[Chat], settings: GenerationSettings
    ) -> list[str]:
        """The answer to every chat from `model` (the base with this output's adapter merged)."""
        raise NotImplementedError
