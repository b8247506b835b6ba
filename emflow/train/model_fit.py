"""Whether an experiment's adapter fits its model: layers, target modules and rank.

The dry run (emflow.workflow.preflight) checks what the model's config.json on this machine can
tell; the train job checks again once the model is surely at hand, and then the target modules
of any architecture (`check_model_compatibility`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from emflow.config import ExperimentConfig
from emflow.errors import EmflowError

# The linear layers of Llama-style decoders, as (input, output) sizes from the model config.
_LLAMA_TYPES = {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "olmo", "olmo2"}


def local_model_file(model: str, name: str) -> Path | None:
    """A file of a model from its local folder or the Hugging Face cache; None when neither has
    it (it is fetched when a job loads the model)."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path / name if (path / name).is_file() else None
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(model, name)
    except Exception:  # not a hub id, or no cache: nothing to check from
        return None
    return Path(found) if isinstance(found, str) else None


def cached_model_config(model: str) -> dict[str, Any] | None:
    """A model's config.json from its local folder or the Hugging Face cache; None when neither
    has it (it is fetched when a job loads the model)."""
    file = local_model_file(model, "config.json")
    return json.loads(file.read_text(encoding="utf-8")) if file is not None else None


def linear_shapes(model_config: Mapping[str, Any]) -> dict[str, tuple[int, int]] | None:
    """{module name: (in features, out features)} of a Llama-style decoder layer, or None for a
    model type whose module names this does not know."""
    if model_config.get("model_type") not in _LLAMA_TYPES:
        return None
    hidden = model_config["hidden_size"]
    heads = model_config["num_attention_heads"]
    kv_heads = model_config.get("num_key_value_heads") or heads
    head_dim = model_config.get("head_dim") or hidden // heads
    inner = model_config["intermediate_size"]
    return {
        "q_proj": (hidden, heads * head_dim),
        "k_proj": (hidden, kv_heads * head_dim),
        "v_proj": (hidden, kv_heads * head_dim),
        "o_proj": (heads * head_dim, hidden),
        "gate_proj": (hidden, inner),
        "up_proj": (hidden, inner),
        "down_proj": (inner, hidden),
    }


def check_model_fit(config: ExperimentConfig, model_config: Mapping[str, Any], source: str) -> None:
    """The experiment's layers, target modules and rank exist in (and fit) the model."""
    layers = model_config.get("num_hidden_layers")
    for index in config.layers_to_transform or []:
        if layers is not None and index >= layers:
            raise EmflowError(
                f"{source}: layers_to_transform holds {index} but {config.model} has {layers} "
                f"layers (0-{layers - 1}); use indices from 0 to {layers - 1}."
            )
    shapes = linear_shapes(model_config)
    if shapes is None:
        return
    for module in config.target_modules:
        if module not in shapes:
            raise EmflowError(
                f"{source}: target_modules holds '{module}', which {config.model} does not have; "
                f"choose from {', '.join(shapes)}."
            )
    smallest = min(min(shapes[m]) for m in config.target_modules)
    if config.r > smallest:
        raise EmflowError(
            f"{source}: r is {config.r}, larger than the smallest side ({smallest}) of the "
            f"adapted matrices of {config.model}, so the adapter cannot use that rank; use r at "
            f"most {smallest}."
        )


def check_model_compatibility(config: ExperimentConfig, source: str) -> None:
    """Fail before loading weights when the LoRA targets do not exist in the model.

    The dry run's checks (`check_model_fit`) again, now that the model's config is surely at
    hand, then the target modules of any architecture, on a model built on the meta device
    from its config (which costs no memory or time).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    model_config = AutoConfig.from_pretrained(config.model)
    check_model_fit(config, model_config.to_dict(), source)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config)
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    for module in config.target_modules:
        if module not in names:
            linear = sorted(
                {
                    n.rsplit(".", 1)[-1]
                    for n, m in model.named_modules()
                    if isinstance(m, torch.nn.Linear)
                }
            )
            raise EmflowError(
                f"{source}: target_modules holds '{module}', which {config.model} does not have; "
                f"choose from {', '.join(linear)}."
            )
