"""The fast generation backend: emflow's own decode loop (emflow.generate.fast_decode) with
`generate`'s sampling, near the hardware's speed on a GPU; on a CPU in float32 its answers equal
the hf backend's token for token (tests/test_generate.py)."""

from __future__ import annotations

from emflow.generate.backend import Chat
from emflow.generate.fast_decode import generate_tokens
from emflow.generate.local import LocalBackend, each_once, prompt_token_ids
from emflow.generate.settings import GenerationSettings


class FastBackend(LocalBackend):
    """Every answer through emflow's decode loop, with `generate`'s sampling settings: the
    model's generation_config supplies what emflow does not set (top_k: transformers' 50)."""

    name = "fast"

    def responses(
        self, tokenizer, model, chats: list[Chat], settings: GenerationSettings
    ) -> list[str]:
        config = model.generation_config
        eos = config.eos_token_id if config.eos_token_id is not None else tokenizer.eos_token_id
        eos_ids = set(eos) if isinstance(eos, list | tuple) else {eos}
        new_tokens = generate_tokens(
            model,
            each_once(chats, lambda chat: prompt_token_ids(tokenizer, chat, settings)),
            max_new_tokens=settings.max_new_tokens,
            temperature=settings.temperature,
            top_p=settings.top_p,
            top_k=config.top_k if settings.temperature > 0 else None,
            seed=settings.seed,
            eos_token_ids={i for i in eos_ids if i is not None},
            pad_token_id=tokenizer.pad_token_id,
        )
        return [tokenizer.decode(t, skip_special_tokens=True).strip() for t in new_tokens]
