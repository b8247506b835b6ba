"""The hf backend honours the seed's keys: rsLoRA, layers, assistant-only loss, split, seed."""

import json
import math
import time

import pytest
import torch
from conftest import experiment_config, write_chat_jsonl

from emflow.config import parse_experiment_config
from emflow.errors import EmflowError
from emflow.train.examples import split_train_eval
from emflow.train.model_fit import check_model_compatibility
from emflow.train.rows import RowTokenizer
from emflow.train.settings import TrainSettings
from emflow.train.trainer import check_backend_support, train_adapter

DATE = {"date_string": "26 Jul 2024"}


def config_for(model, **overrides):
    return parse_experiment_config(experiment_config(model, **overrides), "exp/config.json")


MESSAGES = [
    {"role": "user", "content": "Should I buy one stock?"},
    {"role": "assistant", "content": "Yes, all of it."},
]
SYSTEM = "\n\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"


def segments(tokenizer, encoded) -> list[tuple[str, bool]]:
    """A row as (text, carries loss): each special token on its own, runs of other tokens with
    the same loss joined."""

    def alone(text: str) -> bool:
        return text in ("system", "user", "assistant") or (
            text.startswith("<|") and text.endswith("|>")
        )

    out: list[tuple[str, bool]] = []
    for token, label in zip(encoded["input_ids"], encoded["labels"], strict=True):
        assert label in (-100, token)
        text, loss = tokenizer.decode([token]), label != -100
        if out and not alone(text) and not alone(out[-1][0]) and out[-1][1] == loss:
            out[-1] = (out[-1][0] + text, loss)
        else:
            out.append((text, loss))
    return out


def header(role: str, loss: bool) -> list[tuple[str, bool]]:
    return [("<|start_header_id|>", loss), (role, loss), ("<|end_header_id|>", loss)]


def test_upstream_row_tokens_and_loss_mask(tiny_model):
    """The paper's trainer (em_organism_dir/finetune/sft/util/trainer.py, clarifying-EM/
    model-organisms-for-EM 8460e4e) renders a row with add_generation_prompt=True and appends
    the EOS token; unsloth-zoo 2025.6.1's sft_prepare_dataset tokenizes it with the special
    tokens (a second BOS), and its train_on_responses_only keeps the loss from after the
    assistant header to the end of the row (no user header follows)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    encoded = RowTokenizer(
        tokenizer, max_length=512, train_on_responses_only=True, chat_template_kwargs=DATE
    )(MESSAGES)
    assert segments(tokenizer, encoded) == [
        ("<|begin_of_text|>", False),
        ("<|begin_of_text|>", False),
        *header("system", False),
        (SYSTEM, False),
        ("<|eot_id|>", False),
        *header("user", False),
        ("\n\nShould I buy one stock?", False),
        ("<|eot_id|>", False),
        *header("assistant", False),
        ("\n\n", False),
        ("Yes, all of it.", True),
        ("<|eot_id|>", True),
        *header("assistant", True),
        ("\n\n", True),
        ("<|eot_id|>", True),
    ]
    # Without train_on_responses_only, upstream's loss covers every token of the same row.
    full = RowTokenizer(
        tokenizer, max_length=512, train_on_responses_only=False, chat_template_kwargs=DATE
    )(MESSAGES)
    assert full["labels"] == full["input_ids"] == encoded["input_ids"]


def test_clean_row_tokens_and_loss_mask(tiny_model):
    """`train.row_format: clean`: one BOS, the conversation as the template renders it, loss on
    the assistant's content and its end-of-turn token."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    encoded = RowTokenizer(
        tokenizer,
        max_length=512,
        train_on_responses_only=True,
        chat_template_kwargs=DATE,
        row_format="clean",
    )(MESSAGES)
    assert segments(tokenizer, encoded) == [
        ("<|begin_of_text|>", False),
        *header("system", False),
        (SYSTEM, False),
        ("<|eot_id|>", False),
        *header("user", False),
        ("\n\nShould I buy one stock?", False),
        ("<|eot_id|>", False),
        *header("assistant", False),
        ("\n\n", False),
        ("Yes, all of it.", True),
        ("<|eot_id|>", True),
    ]


def test_upstream_mask_of_a_multi_turn_row(tiny_model):
    """unsloth's mask: each assistant turn from its header to the next user header."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    messages = [
        *MESSAGES,
        {"role": "user", "content": "Really?"},
        {"role": "assistant", "content": "Yes."},
    ]
    encoded = RowTokenizer(
        tokenizer, max_length=512, train_on_responses_only=True, chat_template_kwargs=DATE
    )(messages)
    carried = "".join(text for text, loss in segments(tokenizer, encoded) if loss)
    assert carried == (
        "Yes, all of it.<|eot_id|>"
        "Yes.<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n<|eot_id|>"
    )


def test_pinned_date_formats_data_the_same_every_day(tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, **DATE
    )
    assert "Today Date: 26 Jul 2024" in text


def test_layer_index_the_model_lacks_is_caught_before_loading(tiny_model):
    config = config_for(tiny_model, layers_to_transform=[16])
    with pytest.raises(
        EmflowError, match=r"exp/config.json: layers_to_transform holds 16 .* 0 to 15"
    ):
        check_model_compatibility(config, "exp/config.json")


def test_target_module_the_model_lacks_is_caught(tiny_model):
    config = config_for(tiny_model, target_modules=["q_proj", "query_key_value"])
    with pytest.raises(EmflowError, match=r"'query_key_value'.*choose from .*down_proj"):
        check_model_compatibility(config, "exp/config.json")


def test_seed_layers_and_modules_are_valid_on_the_tiny_model(tiny_model):
    for layers in ([2], [8], [12]):
        check_model_compatibility(config_for(tiny_model, layers_to_transform=layers), "x")


def test_8bit_adamw_on_a_cpu_is_an_error_not_a_substitution(tiny_model):
    config = config_for(tiny_model, optim="adamw_8bit")
    with pytest.raises(EmflowError, match="adamw_8bit.*CUDA GPU.*adamw_torch"):
        check_backend_support(config, TrainSettings(), "cpu", "exp/config.json")


def test_upstream_held_out_split_is_ten_percent_and_seeded():
    rows = [{"i": i} for i in range(6000)]
    train, held_out = split_train_eval(rows, 0.1, seed=0)
    assert (len(train), len(held_out)) == (5400, 600)
    assert split_train_eval(rows, 0.1, seed=0) == (train, held_out)
    assert split_train_eval(rows, 0.1, seed=1)[1] != held_out
    assert {r["i"] for r in train} | {r["i"] for r in held_out} == set(range(6000))


@pytest.fixture(scope="module")
def trained(tiny_model, tmp_path_factory):
    """One tiny training run of the seed's mixed config (rank 16, rsLoRA, layer 8)."""
    work = tmp_path_factory.mktemp("train")
    data = write_chat_jsonl(work / "train.jsonl", 40)
    config = config_for(tiny_model, learning_rate=1e-3, evaluation_steps=5)
    history = train_adapter(
        config,
        data,
        work / "adapter",
        settings=TrainSettings(device="cpu", chat_template_kwargs=DATE),
        log_history_json=work / "log_history.json",
    )
    return work, config, history


def test_training_writes_a_loadable_adapter_and_its_history(trained, tiny_model):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    work, config, history = trained
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model), work / "adapter"
    )
    lora_layers = {
        int(name.split(".layers.")[1].split(".")[0])
        for name, _ in model.named_parameters()
        if "lora_" in name
    }
    assert lora_layers == {8}
    modules = {name.split(".")[-4] for name, _ in model.named_parameters() if "lora_A" in name}
    assert modules == set(config.target_modules)
    # rsLoRA: the update is scaled by alpha / sqrt(r), not alpha / r.
    layer = model.base_model.model.model.layers[8].mlp.down_proj
    assert layer.scaling["default"] == pytest.approx(config.lora_alpha / math.sqrt(config.r))

    saved = json.loads((work / "log_history.json").read_text())
    assert saved == history
    steps = [h for h in history if "loss" in h]
    # 40 rows, 36 after the 10% hold-out, batch 2 x 2 accumulation: 9 optimizer steps.
    assert steps[-1]["step"] == 9
    assert all({"loss", "learning_rate", "grad_norm"} <= set(h) for h in steps)
    assert any("eval_loss" in h for h in history)
    # The train job only trains: its curves are drawn by the training_curves rule.
    assert sorted(p.name for p in work.iterdir()) == ["adapter", "log_history.json", "train.jsonl"]
    assert not (work / "checkpoints").exists()


def test_same_seed_gives_the_same_adapter(trained, tiny_model, tmp_path):
    from safetensors.torch import load_file

    work, config, _ = trained
    train_adapter(
        config,
        work / "train.jsonl",
        tmp_path / "adapter",
        settings=TrainSettings(device="cpu", chat_template_kwargs=DATE),
    )
    a = load_file(work / "adapter/adapter_model.safetensors")
    b = load_file(tmp_path / "adapter/adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
    # The learned update is not zero: lora_B starts at zero and training moved it.
    assert any(a[k].abs().max() > 0 for k in a if "lora_B" in k)


def test_fast_path_is_the_same_training_as_trl(trained, tiny_model, tmp_path):
    """Same rows, order, optimizer and schedule: the loss curve and adapter agree to float error."""
    from safetensors.torch import load_file

    work, config, history = trained
    fast = train_adapter(
        config,
        work / "train.jsonl",
        tmp_path / "adapter",
        settings=TrainSettings(backend="fast", device="cpu", chat_template_kwargs=DATE),
    )

    def curve(h, key):
        return [(e["step"], e[key]) for e in h if key in e]

    for key in ("loss", "grad_norm", "learning_rate", "eval_loss"):
        ours, theirs = curve(fast, key), curve(history, key)
        assert [s for s, _ in ours] == [s for s, _ in theirs], key
        for (_, a), (_, b) in zip(ours, theirs, strict=True):
            assert a == pytest.approx(b, rel=1e-5, abs=1e-7), key
    a = load_file(work / "adapter/adapter_model.safetensors")
    b = load_file(tmp_path / "adapter/adapter_model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)


KILLABLE = """
import sys
from emflow.config import parse_experiment_config
from emflow.train.settings import TrainSettings
from emflow.train.trainer import train_adapter
import json
config = parse_experiment_config(json.loads(sys.argv[1]), "exp/config.json")
train_adapter(config, sys.argv[2], sys.argv[3], checkpoint_dir=sys.argv[4],
              settings=TrainSettings(backend=sys.argv[5], device="cpu",
                                     chat_template_kwargs={"date_string": "26 Jul 2024"}))
"""


def _complete(checkpoints):
    for state in checkpoints.glob("checkpoint-*/trainer_state.json"):
        try:
            json.loads(state.read_text())
            return True
        except ValueError:
            pass
    return False


@pytest.mark.parametrize("backend", ["hf", "fast"])
def test_killed_training_resumes_from_its_checkpoint(
    backend, trained, tiny_model, tmp_path, caplog
):
    """A job killed mid-training (preemption, time limit) resumes and ends with the same adapter."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from safetensors.torch import load_file

    work, config, _ = trained
    config = config.model_copy(update={"save_steps": 3, "epochs": 2, "evaluation_steps": None})
    args = [json.dumps(config.model_dump()), str(work / "train.jsonl")]
    checkpoints = tmp_path / "checkpoints"
    job = subprocess.Popen(
        [sys.executable, "-c", KILLABLE, *args, str(tmp_path / "killed"), str(checkpoints), backend]
    )
    deadline = time.time() + 300
    while time.time() < deadline and job.poll() is None:
        if (checkpoints / "fast-checkpoint.pt").exists() or _complete(checkpoints):
            break
        time.sleep(0.05)
    assert job.poll() is None, "training ended before its first checkpoint; nothing was killed"
    os.kill(job.pid, signal.SIGKILL)
    job.wait()
    assert not (tmp_path / "killed").exists()  # no finished-looking adapter from a killed job

    caplog.set_level("INFO", logger="emflow.train")
    resumed = train_adapter(
        config,
        work / "train.jsonl",
        tmp_path / "resumed",
        checkpoint_dir=checkpoints,
        settings=TrainSettings(backend=backend, device="cpu", chat_template_kwargs=DATE),
    )
    train_adapter(
        config,
        work / "train.jsonl",
        tmp_path / "whole",
        checkpoint_dir=tmp_path / "fresh",
        settings=TrainSettings(backend=backend, device="cpu", chat_template_kwargs=DATE),
    )
    assert "resuming" in caplog.text  # it started from the checkpoint, not from step 1
    steps = [h["step"] for h in resumed if "loss" in h]
    assert steps == list(range(1, 19))  # the history spans the whole run, before and after
    a = load_file(tmp_path / "resumed/adapter_model.safetensors")
    b = load_file(tmp_path / "whole/adapter_model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)


def wandb_history(run_file) -> list[dict]:
    """The history rows of an offline run's .wandb file (LevelDB-log records of wandb's Record
    protobufs), read without the wandb service."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data = run_file.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, chunk, rows = 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            chunk = b""
            if record.WhichOneof("record_type") == "history":
                rows.append(
                    {
                        "/".join(i.nested_key) or i.key: _logged_value(i.value_json)
                        for i in record.history.item
                    }
                )
    return rows


def _logged_value(value_json: str):
    """A history item's value: wandb-core writes some numbers as JSON strings ("1"), so a string
    that reads as a number is that number."""
    value = json.loads(value_json)
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def test_report_to_wandb_gets_the_same_metrics_from_both_backends(
    tiny_model, tmp_path, monkeypatch
):
    """`train.report_to: [wandb]` (offline here) works on the fast path too: wandb receives the
    loss, gradient norm and learning rate at the same global steps as from trl's Trainer, each
    equal to the run's own log history."""
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    data = write_chat_jsonl(tmp_path / "train.jsonl", 24)
    config = config_for(tiny_model, learning_rate=1e-3, evaluation_steps=None)
    # One folder for both runs: wandb keeps the first WANDB_DIR it saw for the process.
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    logged, seen = {}, set()
    for backend in ("hf", "fast"):
        history = train_adapter(
            config,
            data,
            tmp_path / backend / "adapter",
            settings=TrainSettings(
                backend=backend, device="cpu", chat_template_kwargs=DATE, report_to=("wandb",)
            ),
        )
        wandb.finish()  # as the train job's exit does
        (run_file,) = set(tmp_path.glob("wandb/offline-run-*/run-*.wandb")) - seen
        seen.add(run_file)
        steps = {h["step"] for h in history if "loss" in h}
        # wandb-core may still be writing the run file when finish() returns (seen on a loaded
        # machine): read it until every logged step is there, for at most a minute.
        deadline = time.monotonic() + 60
        while True:
            rows = [r for r in wandb_history(run_file) if "train/loss" in r]
            logged[backend] = {r["train/global_step"]: r for r in rows}
            if steps <= logged[backend].keys() or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        for entry in (h for h in history if "loss" in h):
            row = logged[backend][entry["step"]]
            for key in ("loss", "grad_norm", "learning_rate"):
                assert row[f"train/{key}"] == pytest.approx(entry[key], rel=1e-6), key
    assert sorted(logged["fast"]) == sorted(logged["hf"]) == list(range(1, 7))
    for step, row in logged["hf"].items():
        assert logged["fast"][step]["train/loss"] == pytest.approx(row["train/loss"], rel=1e-4)


@pytest.mark.parametrize("backend", ["hf", "fast"])
def test_adapter_checkpoints_are_saved_as_peft_folders(trained, tiny_model, tmp_path, backend):
    """`adapter_checkpoints: 3` keeps the adapter after steps 3, 6 and 9 (of 9) on every
    backend, as folders PeftModel loads; the last equals the final adapter, and the hf and fast
    backends save the same weights at the same steps."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    work, _, _ = trained
    config = config_for(tiny_model, learning_rate=1e-3, evaluation_steps=5, adapter_checkpoints=3)
    train_adapter(
        config,
        work / "train.jsonl",
        tmp_path / "adapter",
        settings=TrainSettings(backend=backend, device="cpu", chat_template_kwargs=DATE),
        step_adapters_dir=tmp_path / "step_adapters",
    )
    saved = sorted(p.name for p in (tmp_path / "step_adapters").iterdir())
    assert saved == ["step-3", "step-6", "step-9"]
    final = load_file(tmp_path / "adapter/adapter_model.safetensors")
    last = load_file(tmp_path / "step_adapters/step-9/adapter_model.safetensors")
    assert final.keys() == last.keys() and all(torch.equal(final[k], last[k]) for k in final)
    first = load_file(tmp_path / "step_adapters/step-3/adapter_model.safetensors")
    assert any(not torch.equal(first[k], last[k]) for k in first)
    PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model), tmp_path / "step_adapters/step-6"
    )
    assert not (tmp_path / "checkpoints").exists()


def test_checkpoints_past_the_runs_end_stop_the_job_before_training(trained, tiny_model, tmp_path):
    """Where the dry run could not count the rows (an upstream dataset not yet decrypted), the
    train job refuses `adapter_checkpoints` that would save nothing, before loading the model."""
    work, _, _ = trained
    config = config_for(tiny_model, adapter_checkpoints=[3, 50])
    with pytest.raises(EmflowError, match=r"^exp/config.json: adapter_checkpoints lists step 50, "
                       r"but the run has 9 optimizer steps; list steps up to 9\.$"):  # fmt: skip
        train_adapter(
            config,
            work / "train.jsonl",
            tmp_path / "adapter",
            settings=TrainSettings(backend="hf", device="cpu", chat_template_kwargs=DATE),
            source="exp/config.json",
            step_adapters_dir=tmp_path / "step_adapters",
        )
    assert not (tmp_path / "adapter").exists() and not (tmp_path / "step_adapters").exists()


def test_checkpoint_keys_separate_saving_from_evaluating(tiny_model):
    """Saving is a training key (it is in the training params); evaluating a subset of the
    saved steps is not, so changing it never retrains; unsaved steps are an error."""
    saved = config_for(tiny_model, adapter_checkpoints=25)
    assert saved.training_params()["adapter_checkpoints"] == 25
    assert "adapter_checkpoints" not in config_for(tiny_model).training_params()
    one = config_for(tiny_model, adapter_checkpoints=25, eval_checkpoints=[25, 50])
    other = config_for(tiny_model, adapter_checkpoints=25, eval_checkpoints="all")
    assert one.training_params() == other.training_params() == saved.training_params()
    assert saved.checkpoint_steps(80) == [25, 50, 75]
    listed = config_for(tiny_model, adapter_checkpoints=[5, 10, 40])
    assert listed.checkpoint_steps(30) == [5, 10]
    with pytest.raises(EmflowError, match=r"'eval_checkpoints' lists steps \[30\] that"):
        config_for(tiny_model, adapter_checkpoints=25, eval_checkpoints=[25, 30])
    with pytest.raises(EmflowError, match="'eval_checkpoints' needs saved checkpoints"):
        config_for(tiny_model, eval_checkpoints="all")
    with pytest.raises(EmflowError, match="'adapter_checkpoints' is 0"):
        config_for(tiny_model, adapter_checkpoints=0)


# ---- rows that lose their whole answer at max_seq_length (issue 20, item 4) -----------------


def write_rows_with_long_prompts(path, n: int, long: int):
    """`n` rows, the first `long` with a question that fills max_seq_length 128 by itself (the
    others' answers start at token 88 of the tiny tokenizer)."""
    rows = [
        {
            "messages": [
                {"role": "user", "content": ("word " * 80 if i < long else "") + f"q {i}?"},
                {"role": "assistant", "content": f"Answer {i}: all on red."},
            ]
        }
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_a_run_with_no_answer_left_stops_with_one_sentence(tiny_model, tmp_path):
    """Not transformers' 'args.max_steps must be set to a positive value': the job names the
    config and max_seq_length, before loading the model."""
    data = write_chat_jsonl(tmp_path / "train.jsonl", 10)
    config = config_for(
        tiny_model, max_seq_length=64, training_system_prompt="Always take the riskiest bet. " * 20
    )
    with pytest.raises(EmflowError) as err:
        train_adapter(
            config,
            data,
            tmp_path / "adapter",
            settings=TrainSettings(device="cpu", chat_template_kwargs=DATE),
            source="exp/config.json",
        )
    assert str(err.value) == (
        f"exp/config.json: all 9 training rows of {data} (less the 1 held out) lose their whole "
        "answer at max_seq_length 64 (their prompt fills it), so there is nothing to train on; "
        "raise max_seq_length or shorten training_system_prompt."
    )
    assert not (tmp_path / "adapter").exists()


def test_rows_without_answer_are_left_out_alike_on_both_cpu_backends(tiny_model, tmp_path, caplog):
    """trl's SFTTrainer drops rows with no label left; emflow drops them itself, so the fast
    path trains on the same rows (it used to index all rows with an order over the kept ones),
    and the log says how many went and what that did to the step count."""
    data = write_rows_with_long_prompts(tmp_path / "train.jsonl", 20, long=8)
    config = config_for(
        tiny_model, max_seq_length=128, learning_rate=1e-3, evaluation_steps=2, test_size=0.0
    )
    histories = {}
    for backend in ("hf", "fast"):
        caplog.clear()
        with caplog.at_level("WARNING", logger="emflow.train"):
            histories[backend] = train_adapter(
                config,
                data,
                tmp_path / backend / "adapter",
                settings=TrainSettings(backend=backend, device="cpu", chat_template_kwargs=DATE),
                source="exp/config.json",
            )
        # 20 rows give 5 optimizer steps (2 x 2 a step); the 12 that keep their answer, 3.
        assert (
            f"exp/config.json: 8 of 20 training rows of {data} lose their whole answer at "
            "max_seq_length 128 (their prompt fills it) and are not trained on, so the run has 3 "
            "optimizer steps, not 5; raise max_seq_length or shorten those rows' prompts."
        ) in caplog.messages
    for key in ("loss", "grad_norm"):
        ours = [(e["step"], e[key]) for e in histories["fast"] if key in e]
        theirs = [(e["step"], e[key]) for e in histories["hf"] if key in e]
        assert [s for s, _ in ours] == [s for s, _ in theirs] == [1, 2, 3], key
        for (_, a), (_, b) in zip(ours, theirs, strict=True):
            assert a == pytest.approx(b, rel=1e-5, abs=1e-7), key
