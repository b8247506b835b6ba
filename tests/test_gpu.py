"""GPU paths: the fast backend and 8-bit AdamW on CUDA. Skipped on machines without a GPU."""

import pytest
import torch

from emflow.config import parse_experiment_config
from emflow.train import TrainSettings, train_adapter

from conftest import experiment_config, write_chat_jsonl

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

DATE = {"date_string": "26 Jul 2024"}


def test_fast_path_matches_trl_on_the_gpu_with_8bit_adamw(tiny_model, tmp_path):
    from safetensors.torch import load_file

    data = write_chat_jsonl(tmp_path / "train.jsonl", 160)
    config = parse_experiment_config(
        experiment_config(tiny_model, optim="adamw_8bit", learning_rate=1e-3, evaluation_steps=None),
        "exp/config.json",
    )
    histories = {}
    for backend in ("hf", "fast"):
        histories[backend] = [
            h["loss"]
            for h in train_adapter(
                config, data, tmp_path / backend,
                settings=TrainSettings(backend=backend, device="cuda", chat_template_kwargs=DATE),
            )
            if "loss" in h
        ]
    assert len(histories["hf"]) == len(histories["fast"]) == 36
    for a, b in zip(histories["hf"], histories["fast"]):
        assert a == pytest.approx(b, abs=2e-2)  # bf16 arithmetic, different kernel shapes
    a = load_file(tmp_path / "hf/adapter_model.safetensors")
    b = load_file(tmp_path / "fast/adapter_model.safetensors")
    for key in a:
        if "lora_B" in key:
            assert (a[key] - b[key]).norm() <= 0.05 * a[key].norm()
