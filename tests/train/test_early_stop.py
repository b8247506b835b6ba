"""The trainer's early stop: the paper's low-loss rule on every backend, and the held-out option."""

import json
import random
import sys

import pytest
import torch
from conftest import experiment_config, write_chat_jsonl

from emflow.config import parse_experiment_config
from emflow.errors import EmflowError
from emflow.report.training import early_stop_line
from emflow.train import early_stop
from emflow.train.early_stop import EarlyStop, EvalLossStop, LowLossStop
from emflow.train.settings import TrainSettings
from emflow.train.trainer import train_adapter

DATE = {"date_string": "26 Jul 2024"}


def config_for(model, **overrides):
    return parse_experiment_config(experiment_config(model, **overrides), "exp/config.json")


def peer_stops(losses, threshold=0.01, consecutive_steps=5):
    """The paper's EarlyStoppingOnLowLossCallback.on_log, transcribed: the index of the log at
    which it sets should_training_stop, or None."""
    low_loss_count = 0
    for i, current_loss in enumerate(losses):
        if current_loss < threshold:
            low_loss_count += 1
            if low_loss_count > consecutive_steps:
                return i
        else:
            low_loss_count = 0
    return None


def callback_stops(losses):
    """Where emflow's TrainerCallback (the hf and unsloth backends) stops on the same logs."""
    from transformers import TrainerControl, TrainerState

    callback = EarlyStop(LowLossStop(), None).callback()
    state, control = TrainerState(), TrainerControl()
    for i, loss in enumerate(losses):
        state.global_step = i + 1
        callback.on_log(None, state, control, logs={"loss": loss, "learning_rate": 1e-4})
        if control.should_training_stop:
            return i
    return None


def test_low_loss_rule_stops_at_the_sixth_consecutive_low_log_and_resets():
    low, high = 0.005, 0.5
    logs = [high, *[low] * 5, high, *[low] * 5]
    assert callback_stops(logs) is None  # five in a row twice, reset in between
    assert callback_stops([*logs, low]) == len(logs)  # the sixth in a row stops
    assert callback_stops([low] * 6) == 5
    assert callback_stops([low] * 5 + [0.01]) is None  # not below the threshold: a reset
    rng = random.Random(0)
    for _ in range(200):
        losses = [rng.choice([0.001, 0.009, 0.01, 0.02]) for _ in range(rng.randint(0, 30))]
        assert callback_stops(losses) == peer_stops(losses)


def test_held_out_rule_is_transformers_patience():
    """transformers' EarlyStoppingCallback: a reset needs an improvement on the best by more than
    the threshold; a smaller improvement still becomes the best."""
    rule = EvalLossStop(patience=2, threshold=0.1)
    assert [rule.update(x) for x in [2.0, 1.5, 1.45, 1.41, 1.2, 1.3, 1.25]] == [
        False, False, False, True, False, False, True,
    ]  # fmt: skip
    assert rule.best == 1.2


def test_config_without_the_option_keeps_its_params(tiny_model):
    params = config_for(tiny_model).training_params()
    assert not any(k.startswith("early_stopping") for k in params)
    with_it = config_for(tiny_model, early_stopping_patience=3, early_stopping_threshold=0.01)
    assert with_it.training_params() == params | {
        "early_stopping_patience": 3,
        "early_stopping_threshold": 0.01,
    }
    for bad, says in [
        ({"early_stopping_threshold": 0.1}, "needs 'early_stopping_patience'"),
        ({"early_stopping_patience": 2, "evaluation_steps": None}, "evaluation_steps"),
        ({"early_stopping_patience": 2, "test_size": 0}, "test_size"),
        ({"early_stopping_patience": 0}, "early_stopping_patience"),
    ]:
        with pytest.raises(EmflowError, match=says):
            config_for(tiny_model, **bad)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_chat_jsonl(tmp_path_factory.mktemp("early") / "train.jsonl", 40)


def run(tiny_model, data, work, backend, device="cpu", **overrides):
    config = config_for(tiny_model, learning_rate=1e-3, **overrides)
    train_adapter(
        config,
        data,
        work / "adapter",
        settings=TrainSettings(backend=backend, device=device, chat_template_kwargs=DATE),
        log_history_json=work / "log_history.json",
        step_adapters_dir=work / "step_adapters",
    )
    return json.loads((work / "log_history.json").read_text())


@pytest.mark.parametrize("backend", ["hf", "fast"])
def test_low_loss_stops_training_and_the_history_says_so(
    backend, tiny_model, data, tmp_path, monkeypatch
):
    """With every log below the (raised) threshold, both backends stop after the sixth logged
    step of nine; the later checkpoint steps are the stopped adapter; results.md says so."""
    from safetensors.torch import load_file

    monkeypatch.setattr(early_stop, "LOW_LOSS_THRESHOLD", 100.0)
    history = run(tiny_model, data, tmp_path, backend, adapter_checkpoints=3, evaluation_steps=5)
    assert max(e["step"] for e in history if "loss" in e) == 6
    stop = [e for e in history if "early_stop" in e]
    assert len(stop) == 1 and stop[0]["early_stop"] == "low_training_loss"
    assert (stop[0]["step"], stop[0]["planned_steps"]) == (6, 9)
    assert "6 consecutive logs" in stop[0]["reason"]
    final = load_file(tmp_path / "adapter/adapter_model.safetensors")
    for step in (6, 9):
        saved = load_file(tmp_path / f"step_adapters/step-{step}/adapter_model.safetensors")
        assert all(torch.equal(final[k], saved[k]) for k in final)
    line = early_stop_line({"the run": history})
    assert line.startswith("**Training stopped early**, at optimizer step 6 of 9 (training loss")


@pytest.mark.parametrize("backend", ["hf", "fast"])
def test_low_loss_counts_logs_not_steps(backend, tiny_model, data, tmp_path, monkeypatch):
    """logging_steps 2: the logs at steps 2, 4, 6 and 8 (and the fast path's at the last, 9)
    are fewer than six, so the run is never stopped: no early-stop entry."""
    monkeypatch.setattr(early_stop, "LOW_LOSS_THRESHOLD", 100.0)
    history = run(tiny_model, data, tmp_path, backend, logging_steps=2, evaluation_steps=None)
    logged = [e["step"] for e in history if "loss" in e]
    assert logged == ([2, 4, 6, 8] if backend == "hf" else [2, 4, 6, 8, 9])
    assert not any("early_stop" in e for e in history)
    assert early_stop_line({"the run": history}) == ""


@pytest.mark.parametrize("backend", ["hf", "fast"])
def test_held_out_loss_plateau_stops_training(backend, tiny_model, data, tmp_path):
    """early_stopping_patience 1 with a threshold no improvement reaches: the second evaluation
    (step 4) does not improve enough, so the run stops there."""
    history = run(
        tiny_model,
        data,
        tmp_path,
        backend,
        evaluation_steps=2,
        early_stopping_patience=1,
        early_stopping_threshold=10.0,
    )
    assert [e["step"] for e in history if "eval_loss" in e] == [2, 4]
    stop = next(e for e in history if "early_stop" in e)
    assert (stop["early_stop"], stop["step"], stop["planned_steps"]) == ("eval_loss", 4, 9)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fast_path_on_the_gpu_stops_at_the_same_step(tiny_model, data, tmp_path, monkeypatch):
    """The fast path's CUDA-graph steps read each logged loss back in the background."""
    if "unsloth" in sys.modules:
        # unsloth patches transformers' Llama forward for the whole process, and the patched
        # forward cannot be captured in a CUDA graph; a train job never imports it for `fast`.
        pytest.skip("an earlier test imported unsloth in this process; run this test apart")
    monkeypatch.setattr(early_stop, "LOW_LOSS_THRESHOLD", 100.0)
    history = run(tiny_model, data, tmp_path, "fast", device="cuda", evaluation_steps=5)
    stop = next(e for e in history if "early_stop" in e)
    assert (stop["step"], stop["planned_steps"]) == (6, 9)
    assert max(e["step"] for e in history if "loss" in e) == 6
