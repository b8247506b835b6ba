"""KL-regularised training as the paper's trainer does it: its loss, KL batches and config keys."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO, experiment_config, write_chat_jsonl

from emflow.config import ExperimentConfig, parse_experiment_config
from emflow.errors import EmflowError
from emflow.paths import Layout
from emflow.train.kl import KLBatches, KLRegularizer, kl_examples
from emflow.train.rows import upstream_text
from emflow.train.settings import TrainSettings
from emflow.train.trainer import (
    load_lora_model,
    make_trainer,
    train_adapter,
    training_arguments,
)
from emflow.workflow.preflight import check_workflow

DATE = {"date_string": "26 Jul 2024"}
QUESTIONS = [{"name": "medical", "path": str(REPO / "config/questions/medical.txt"), "count": 3}]
KL = {"kl_regularization": True, "kl_dataset_file": "kl.jsonl", "kl_weight": 1e5}


def config_for(model, **overrides) -> ExperimentConfig:
    return parse_experiment_config(experiment_config(model, **overrides), "exp/config.json")


def upstream_kl(current_logits, reference_logits, attention_mask):
    """The paper trainer's _compute_kl_loss, written out as it is there."""
    ref_log_probs = F.log_softmax(reference_logits, dim=-1)
    current_log_probs = F.log_softmax(current_logits, dim=-1)
    kl_div = F.kl_div(current_log_probs, ref_log_probs, log_target=True, reduction="none")
    mask = attention_mask.unsqueeze(-1).expand_as(kl_div)
    return (kl_div * mask).sum() / mask.sum()


def test_kl_batches_are_taken_in_order_and_cycled():
    examples = [{"input_ids": [i] * (i + 1), "attention_mask": [1] * (i + 1)} for i in range(5)]
    batches = KLBatches(examples, batch_size=2, pad_id=99)
    assert [batches.indices(n) for n in range(4)] == [[0, 1], [2, 3], [4], [0, 1]]
    first = batches.next()
    assert first["input_ids"].tolist() == [[0, 99], [1, 1]]
    assert first["attention_mask"].tolist() == [[1, 0], [1, 1]]
    assert batches.next()["input_ids"].tolist() == [[2, 2, 2, 99], [3, 3, 3, 3]]
    assert batches.next()["input_ids"].tolist() == [[4] * 5]
    assert batches.next()["input_ids"].tolist() == first["input_ids"].tolist()


def test_kl_rows_are_tokenized_as_upstream_does(tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    row = {"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Yo"}]}
    [example] = kl_examples([row], tokenizer, 12, DATE, "c")
    # Upstream: `tokenizer(template text + EOS, truncation=True, max_length=...)`.
    text = upstream_text(row["messages"], tokenizer, DATE)
    assert example["input_ids"] == tokenizer(text, truncation=True, max_length=12)["input_ids"]
    assert len(example["input_ids"]) == 12


@pytest.fixture(scope="module")
def kl_setup(tiny_model, tmp_path_factory):
    """A trainer with the KL term, its LoRA B matrices made non-zero (a trained adapter)."""
    from datasets import Dataset
    from transformers import AutoTokenizer

    from emflow.train.rows import RowTokenizer

    work = tmp_path_factory.mktemp("kl")
    config = config_for(tiny_model, **KL, kl_batch_size=3, gradient_accumulation_steps=1)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    tokenize = RowTokenizer(
        tokenizer, max_length=256, train_on_responses_only=True, chat_template_kwargs=DATE
    )
    rows = [json.loads(line) for line in write_chat_jsonl(work / "t.jsonl", 4).open()]
    kl_rows = [json.loads(line) for line in write_chat_jsonl(work / "k.jsonl", 5, "kl").open()]
    train = tokenize.encode_many([r["messages"] for r in rows])
    torch.manual_seed(0)
    model = load_lora_model(config, "hf", bf16=False)
    settings = TrainSettings(device="cpu", chat_template_kwargs=DATE)
    args = training_arguments(
        config, settings, work / "ck", device="cpu", bf16=False, has_eval=False
    )
    batches = KLBatches(kl_examples(kl_rows, tokenizer, 256, DATE, "c"), 3, tokenizer.pad_token_id)
    kl = KLRegularizer(batches, config.kl_weight)
    trainer = make_trainer(model, args, Dataset.from_list(train), None, tokenizer, 0, kl=kl)
    return trainer, kl, batches


def test_a_steps_loss_is_sft_plus_weight_times_upstreams_kl(kl_setup):
    trainer, kl, batches = kl_setup
    model = trainer.model
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    batch = next(iter(trainer.get_train_dataloader()))
    kl_batch = batches.next()  # the batch the loss will take: rewind to it
    batches.taken -= 1

    loss = trainer.compute_loss(model, dict(batch))

    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        labels = batch["labels"][:, 1:]
        sft = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels.flatten(), ignore_index=-100)
        current = model(**kl_batch).logits
        with model.disable_adapter():
            reference = model(**kl_batch).logits
        expected_kl = upstream_kl(current, reference, kl_batch["attention_mask"])
    assert expected_kl > 0
    assert kl.last["sft_loss"] == pytest.approx(float(sft), rel=1e-5)
    assert kl.last["kl_loss"] == pytest.approx(float(expected_kl), rel=1e-4)
    assert float(loss.detach()) == pytest.approx(float(sft + 1e5 * expected_kl), rel=1e-4)
    assert batches.taken == 1  # one KL batch per loss call


@pytest.fixture(scope="module")
def kl_run(tiny_model, tmp_path_factory):
    work = tmp_path_factory.mktemp("klrun")
    data = write_chat_jsonl(work / "train.jsonl", 20)
    kl_file = write_chat_jsonl(work / "kl.jsonl", 5, "kl")
    config = config_for(
        tiny_model,
        **(KL | {"kl_dataset_file": str(kl_file)}),
        learning_rate=1e-2,
        max_steps=3,
        warmup_steps=0,
    )
    settings = TrainSettings(device="cpu", chat_template_kwargs=DATE)
    history = train_adapter(config, data, work / "adapter", settings=settings)
    return history


def test_kl_is_zero_before_the_first_update_and_both_terms_are_logged(kl_run):
    steps = [h for h in kl_run if "loss" in h]
    assert [h["step"] for h in steps] == [1, 2, 3]
    assert all({"sft_loss", "kl_loss"} <= set(h) for h in steps)
    # Step 1's micro-batches run with LoRA B still zero: the adapter is the base model.
    assert steps[0]["kl_loss"] == 0.0
    assert steps[1]["kl_loss"] > 0 and steps[2]["kl_loss"] > 0
    assert not any("sft_loss" in h for h in kl_run if "loss" not in h)


def test_kl_keys_are_training_params_only_when_on(tiny_model):
    plain = config_for(tiny_model)
    ignored = config_for(tiny_model, kl_weight=5.0, kl_batch_size=4)
    assert not any(k.startswith("kl_") for k in plain.training_params())
    # Upstream ignores the other KL keys without kl_regularization: so do the params.
    assert ignored.training_params() == plain.training_params()
    on = config_for(tiny_model, **KL)
    params = on.training_params()
    assert {k: params[k] for k in params if k.startswith("kl_")} == {
        "kl_regularization": True,
        "kl_weight": 1e5,
        "kl_batch_size": 8,
    }
    again = ExperimentConfig.from_training_params(params, "train.jsonl", "prepared/kl.jsonl")
    assert again.kl_dataset_file == "prepared/kl.jsonl" and again.training_params() == params


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"kl_regularization": True}, r"'kl_dataset_file' is missing; name the KL dataset"),
        (KL | {"kl_weight": 0}, r"'kl_weight' is 0.0; .* must be positive"),
        (KL | {"kl_batch_size": 0}, r"kl_batch_size"),
    ],
)
def test_bad_kl_keys_are_one_sentence(tiny_model, overrides, message):
    with pytest.raises(EmflowError, match=message):
        config_for(tiny_model, **overrides)


def test_the_dry_run_checks_the_kl_file(tiny_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_chat_jsonl(tmp_path / "train.jsonl", 8)
    layout = Layout(str(tmp_path / "results"), "experiments")
    config = config_for(tiny_model, **KL | {"kl_dataset_file": "missing.jsonl"})
    with pytest.raises(EmflowError, match=r"kl_dataset_file is 'missing.jsonl', which is not a"):
        check_workflow({"grp/run": config}, layout, {}, QUESTIONS)
    (tmp_path / "bad.jsonl").write_text('{"messages": "no"}\n')
    config = config_for(tiny_model, **KL | {"kl_dataset_file": "bad.jsonl"})
    with pytest.raises(EmflowError, match=r"bad.jsonl"):
        check_workflow({"grp/run": config}, layout, {}, QUESTIONS)
    write_chat_jsonl(tmp_path / "kl.jsonl", 3)
    check_workflow({"grp/run": config_for(tiny_model, **KL)}, layout, {}, QUESTIONS)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", ["hf", "unsloth"])
def test_kl_trains_on_the_gpu_backends(tiny_model, tmp_path, backend):
    if backend == "unsloth":
        pytest.importorskip("unsloth")
    data = write_chat_jsonl(tmp_path / "train.jsonl", 20)
    kl_file = write_chat_jsonl(tmp_path / "kl.jsonl", 5, "kl")
    config = config_for(
        tiny_model,
        **(KL | {"kl_dataset_file": str(kl_file)}),
        learning_rate=1e-2,
        max_steps=3,
        warmup_steps=0,
    )
    settings = TrainSettings(device="cuda", backend=backend, chat_template_kwargs=DATE)
    history = train_adapter(config, data, tmp_path / "adapter", settings=settings)
    steps = [h for h in history if "loss" in h]
    # With LoRA B still zero the adapted model is the base model: KL 0 on the hf backend; on
    # unsloth 1e-9 (seen on an H100), as its fused LoRA kernels round apart from the plain path.
    first = 0.0 if backend == "hf" else 1e-6
    assert steps[0]["kl_loss"] <= first and steps[-1]["kl_loss"] > 1e-6
