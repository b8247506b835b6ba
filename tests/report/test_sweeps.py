"""Checkpoint sweeps: planned steps, the LoRA norm, the sweep table and the first EM step."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import pytest
from adapter_files import write_adapter
from conftest import experiment_config

from emflow.config import parse_experiment_config
from emflow.errors import EmflowError
from emflow.report.analysis import Analysis, load_run
from emflow.report.results import sweep_markdown
from emflow.report.training import (
    SweepPoint,
    first_em_step,
    lora_norm,
    loss_at,
    sweep_table,
)
from emflow.workflow.plan import eval_steps, planned_optimizer_steps


def config(**overrides):
    return parse_experiment_config(experiment_config("m", **overrides), "g/e/config.json")


def test_planned_steps_follow_the_trainers_arithmetic(tmp_path):
    """6000 mixed rows, 10% held out (ceil, as datasets' train_test_split), batch 2 x 8, one
    epoch: 5400 rows, 2700 micro-batches, 338 optimizer steps."""
    mixed = config(training_file=None, datasets={"a": 3000, "b": 3000}, epochs=1,
                   per_device_train_batch_size=2, gradient_accumulation_steps=8)  # fmt: skip
    assert planned_optimizer_steps(mixed, None) == math.ceil(math.ceil(5400 / 2) / 8)
    assert planned_optimizer_steps(config(max_steps=7), None) == 7
    rows = tmp_path / "rows.jsonl"
    rows.write_text("{}\n" * 40)
    single = config(epochs=2, per_device_train_batch_size=2, gradient_accumulation_steps=2)
    assert planned_optimizer_steps(single, str(rows)) == 2 * math.ceil(math.ceil(36 / 2) / 2)
    assert planned_optimizer_steps(single, str(tmp_path / "missing.jsonl")) is None


def test_eval_steps_are_the_saved_steps_asked_for():
    every = config(adapter_checkpoints=25, eval_checkpoints="all")
    assert eval_steps(every, 80, "c") == [25, 50, 75]
    with pytest.raises(EmflowError, match="not known before training"):
        eval_steps(every, None, "c")
    listed = config(adapter_checkpoints=[5, 10, 40], eval_checkpoints="all")
    assert eval_steps(listed, None, "c") == [5, 10, 40] and eval_steps(listed, 40, "c") == [
        5,
        10,
        40,
    ]
    # A saved step past the run's end would be silently never saved nor evaluated.
    with pytest.raises(EmflowError, match="lists step 40, but the run has 30 optimizer steps"):
        eval_steps(listed, 30, "c")
    with pytest.raises(EmflowError, match="is 25, but the run has 20 optimizer steps"):
        eval_steps(every, 20, "c")
    some = config(adapter_checkpoints=5, eval_checkpoints=[10, 5])
    assert eval_steps(some, None, "c") == [5, 10]
    with pytest.raises(EmflowError, match="lists step 10, but the run has 8 optimizer steps"):
        eval_steps(some, 8, "c")
    assert eval_steps(config(adapter_checkpoints=5), 80, "c") == []


@pytest.mark.parametrize("rslora", [False, True])
def test_lora_norm_is_the_norm_of_the_scaled_update(tmp_path, rslora):
    weights = write_adapter(tmp_path / "a", 0, rslora=rslora)
    scaling = 8 / math.sqrt(4) if rslora else 8 / 4
    squares = sum(
        np.linalg.norm(scaling * weights[k.replace("lora_A", "lora_B")].astype(np.float64)
                       @ weights[k].astype(np.float64)) ** 2
        for k in weights if "lora_A" in k
    )  # fmt: skip
    assert lora_norm(tmp_path / "a") == pytest.approx(math.sqrt(squares), rel=1e-9)


def test_loss_at_takes_the_last_logged_step_up_to_it():
    history = [{"loss": 3.0, "step": 1}, {"eval_loss": 9.0, "step": 2}, {"loss": 2.0, "step": 3}]
    assert loss_at(history, 2) == 3.0 and loss_at(history, 3) == 2.0
    assert math.isnan(loss_at(history, 0))


def judged(path, aligned, coherent):
    n = len(aligned)
    pd.DataFrame(
        {
            "id": [f"q{i}" for i in range(n)],
            "question": [f"Q{i}?" for i in range(n)],
            "response": ["a"] * n,
            "question_id": [f"q{i}" for i in range(n)],
            "aligned_score": aligned,
            "coherent_score": coherent,
        }  # fmt: skip
    ).to_csv(path, index=False)
    return str(path)


def test_sweep_table_and_first_em_step(tmp_path):
    """Step 10: no EM answer; step 20: every answer EM (aligned 10, coherent 90). The first
    step outside the base model's noise is 20; the table carries loss and norm per step."""
    history = tmp_path / "log_history.json"
    history.write_text(json.dumps([{"loss": 2.5, "step": 10}, {"loss": 1.5, "step": 20}]))
    points = []
    for step, aligned in ((10, [90] * 20), (20, [10] * 20)):
        write_adapter(tmp_path / f"step-{step}", step)
        points.append(
            SweepPoint(
                0,
                step,
                judged(tmp_path / f"j{step}.csv", aligned, [90] * 20),
                str(tmp_path / f"step-{step}"),
                str(history),
            )  # fmt: skip
        )
    analysis = Analysis(n_resamples=200)
    table = sweep_table(points, analysis)
    assert list(table["step"]) == [10, 20]
    assert list(table["em_rate"]) == [0.0, 1.0]
    assert list(table["train_loss"]) == [2.5, 1.5]
    assert table["lora_norm"].iloc[1] == pytest.approx(lora_norm(tmp_path / "step-20"))
    base = judged(tmp_path / "base.csv", [90] * 20, [90] * 20)
    assert first_em_step(table, base_em_high=0.0) == 20
    csv_path = tmp_path / "sweep.csv"
    table.to_csv(csv_path, index=False)
    base_em = load_run(base, analysis).metrics["em_rate"]
    text = sweep_markdown(pd.read_csv(csv_path), base_em, analysis)
    assert "outside the base model's noise from step 20 on" in text
    assert re.search(r"\| 20 +\| +10\.0 \| +90\.0 \| +100\.0% \[", text), text
