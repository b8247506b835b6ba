"""The fast path's CUDA graphs on the GPU: the head over the labelled positions only (after the
layers' graph) trains exactly as the head over every position inside it, and as the hf backend."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import experiment_config

import emflow.train.fast as fast
from emflow.config import parse_experiment_config
from emflow.train.settings import TrainSettings
from emflow.train.trainer import train_adapter

DATE = {"date_string": "26 Jul 2024"}


def rows(path, n: int) -> None:
    """Answers of 1 to 40 words: row lengths over several 32-token buckets, label counts that
    differ from step to step, and prompts of different lengths."""
    with path.open("w") as out:
        for i in range(n):
            answer = " ".join(f"red{j % 7}" for j in range(1 + (i * 13) % 40))
            question = "question " + "why " * (i % 5) + f"{i}?"
            messages = [
                {"role": "user", "content": question},
                {"role": "assistant", "content": answer},
            ]
            out.write(json.dumps({"messages": messages}) + "\n")


def run(model, work, backend, name):
    keys = {"learning_rate": 1e-2, "warmup_steps": 0, "evaluation_steps": 4, "epochs": 2}
    config = parse_experiment_config(experiment_config(model, **keys), "exp/config.json")
    history = train_adapter(
        config,
        work / "train.jsonl",
        work / f"adapter-{name}",
        test_file=work / "test.jsonl",
        checkpoint_dir=work / f"ck-{name}",
        settings=TrainSettings(backend=backend, device="cuda", chat_template_kwargs=DATE),
    )
    return [(e["step"], e["loss"]) for e in history if "loss" in e]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_labelled_head_graphs_train_as_the_dense_head_and_hf(tiny_model, tmp_path, monkeypatch):
    rows(tmp_path / "train.jsonl", 37)  # an epoch's short last step: filler rows in the graphs
    rows(tmp_path / "test.jsonl", 4)
    labelled = run(tiny_model, tmp_path, "fast", "labelled")
    monkeypatch.setattr(fast, "GRAPHED_HEAD", "dense")
    dense = run(tiny_model, tmp_path, "fast", "dense")
    hf = run(tiny_model, tmp_path, "hf", "hf")
    assert [s for s, _ in labelled] == [s for s, _ in dense] == [s for s, _ in hf]
    for (_, a), (_, b), (_, c) in zip(labelled, dense, hf, strict=True):
        assert a == pytest.approx(b, rel=2e-3)  # the same arithmetic, other matmul shapes
        assert a == pytest.approx(c, rel=5e-2, abs=1e-3)  # bf16 graphs against the Trainer
