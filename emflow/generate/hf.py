"""The hf generation backend: transformers' `generate` on left-padded batches (the reference the
fast backend is checked against)."""

from __future__ import annotations

import logging

from emflow.generate.backend import Chat
from emflow.generate.local import LocalBackend, each_once, render_prompt
from emflow.generate.settings import GenerationSettings

log = logging.getLogger("emflow.generate")


class HFBackend(LocalBackend):
    """Every answer through transformers' `generate`, `batch_size` prompts at a time."""

    name = "hf"

    def responses(
        self, tokenizer, model, chats: list[Chat], settings: GenerationSettings
    ) -> list[str]:
        import torch

        prompts = each_once(chats, lambda chat: render_prompt(tokenizer, chat, settings))
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
