"""Small PEFT adapter folders with known weights, written by tests."""

from __future__ import annotations

import json

import numpy as np


def write_adapter(folder, seed: int, *, r=4, alpha=8, rslora=False):
    from safetensors.numpy import save_file

    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    weights = {}
    for module in ("q_proj", "down_proj"):
        prefix = f"base_model.model.model.layers.8.self_attn.{module}"
        weights[f"{prefix}.lora_A.weight"] = rng.normal(size=(r, 16)).astype(np.float32)
        weights[f"{prefix}.lora_B.weight"] = rng.normal(size=(24, r)).astype(np.float32)
    save_file(weights, folder / "adapter_model.safetensors")
    (folder / "adapter_config.json").write_text(
        json.dumps({"r": r, "lora_alpha": alpha, "use_rslora": rslora})
    )
    return weights
