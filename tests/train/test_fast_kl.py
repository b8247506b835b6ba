"""KL-regularised training on the fast backend is the hf backend's: the same KL batches in the
same order, the same loss, logged terms, held-out loss and adapter."""

from __future__ import annotations

import pytest
import torch
from conftest import experiment_config, write_chat_jsonl

from emflow.config import parse_experiment_config
from emflow.train.settings import TrainSettings
from emflow.train.trainer import train_adapter

DATE = {"date_string": "26 Jul 2024"}


def kl_config(model, kl_file, **overrides):
    # 21 rows at 2 x 2 a step: 6 steps, the last with one row (one micro-batch, one KL batch);
    # 5 KL rows in batches of 2: padded batches, the last shorter, cycled within the run.
    keys = {
        "kl_regularization": True,
        "kl_dataset_file": str(kl_file),
        "kl_weight": 1e5,
        "kl_batch_size": 2,
        "learning_rate": 1e-2,
        "warmup_steps": 0,
        "evaluation_steps": 3,
    }
    return parse_experiment_config(experiment_config(model, **keys | overrides), "exp/config.json")


def run(config, work, backend, device="cpu", name=None):
    return train_adapter(
        config,
        work / "train.jsonl",
        work / f"adapter-{name or backend}",
        test_file=work / "test.jsonl",
        checkpoint_dir=work / f"ck-{name or backend}",
        settings=TrainSettings(backend=backend, device=device, chat_template_kwargs=DATE),
    )


def curve(history, key):
    return [(e["step"], e[key]) for e in history if key in e]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    work = tmp_path_factory.mktemp("fastkl")
    write_chat_jsonl(work / "train.jsonl", 21)
    write_chat_jsonl(work / "test.jsonl", 3, "held")
    write_chat_jsonl(work / "kl.jsonl", 5, "kl")
    return work


def test_fast_kl_is_the_hf_backends_kl_training(tiny_model, work):
    from safetensors.torch import load_file

    config = kl_config(tiny_model, work / "kl.jsonl")
    hf, fast = run(config, work, "hf"), run(config, work, "fast")
    for key in ("loss", "sft_loss", "kl_loss", "grad_norm", "learning_rate", "eval_loss"):
        ours, theirs = curve(fast, key), curve(hf, key)
        assert [s for s, _ in ours] == [s for s, _ in theirs], key
        for (_, a), (_, b) in zip(ours, theirs, strict=True):
            assert a == pytest.approx(b, rel=1e-5, abs=1e-7), key
    assert [s for s, _ in curve(fast, "loss")] == [1, 2, 3, 4, 5, 6]
    assert [s for s, _ in curve(fast, "eval_loss")] == [3, 6]
    kl = [v for _, v in curve(fast, "kl_loss")]
    assert kl[0] == 0.0 and all(v > 0 for v in kl[1:])  # LoRA B is zero before the first update
    assert not any("sft_loss" in e for e in fast if "loss" not in e)
    a = load_file(work / "adapter-hf/adapter_model.safetensors")
    b = load_file(work / "adapter-fast/adapter_model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fast_kl_on_the_gpu_follows_the_hf_backend(tiny_model, work):
    """CUDA graphs (the default) and eager steps against the hf backend, in bf16: the curves
    agree to bf16 rounding, and the graphed and eager fast steps to float error."""
    config = kl_config(tiny_model, work / "kl.jsonl")
    hf = run(config, work, "hf", "cuda", "cuda-hf")
    fast = run(config, work, "fast", "cuda", "cuda-fast")
    for key in ("loss", "sft_loss", "kl_loss", "eval_loss"):
        ours, theirs = curve(fast, key), curve(hf, key)
        assert [s for s, _ in ours] == [s for s, _ in theirs], key
        for (_, a), (_, b) in zip(ours, theirs, strict=True):
            assert a == pytest.approx(b, rel=5e-2, abs=1e-3), key
    assert curve(fast, "kl_loss")[0][1] == 0.0 and curve(fast, "kl_loss")[-1][1] > 0


@pytest.mark.parametrize("chunk", [1024, 3, None])
def test_the_cached_reference_and_blockwise_kl_are_autograds_kl(
    tiny_model, work, chunk, monkeypatch
):
    """FastKL keeps each KL batch's reference from its first use (before the adapter changes)
    and takes the KL in blocks of tokens with its gradient written out: the same term and adapter
    gradients as emflow.train.kl.token_kl under autograd, through the whole model, with a fresh
    reference at every use. `chunk` None: the plain path (a head with an adapter) does too."""
    import json

    from transformers import AutoTokenizer

    import emflow.train.fast_kl as fast_kl_module
    from emflow.train.fast import _Model
    from emflow.train.fast_kl import FastKL
    from emflow.train.kl import KLBatches, KLRegularizer, kl_examples, token_kl
    from emflow.train.trainer import load_lora_model

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    rows = [json.loads(line) for line in (work / "kl.jsonl").open()]
    examples = kl_examples(rows, tokenizer, 256, DATE, "kl.jsonl")
    torch.manual_seed(0)
    model = load_lora_model(kl_config(tiny_model, work / "kl.jsonl"), "fast", bf16=False)
    model.eval()  # no dropout: both sides see the same adapter
    batches = KLBatches(examples, 2, tokenizer.pad_token_id)
    autocast = torch.autocast("cpu", enabled=False)
    fast = FastKL(KLRegularizer(batches, 1e5), model, _Model(model), "cpu", autocast)
    assert fast.cached_reference
    fast.cached_reference = chunk is not None
    monkeypatch.setattr(fast_kl_module, "CHUNK", chunk or fast_kl_module.CHUNK)
    for _ in range(batches.batches):  # LoRA B is zero: the reference is the current model
        assert float(fast.kl()) == 0.0
    assert len(fast.cache) == batches.batches
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    trainable = [p for p in model.parameters() if p.requires_grad]
    for n in range(batches.batches, 2 * batches.batches + 1):  # cycled: cached batches
        batch = batches.batch(n)
        with torch.no_grad(), model.disable_adapter():
            reference = model(**batch).logits
        expected = token_kl(model(**batch).logits, reference, batch["attention_mask"])
        grads = torch.autograd.grad(1e5 * expected, trainable)
        for param in trainable:
            param.grad = None
        assert float(expected.detach()) > 0
        assert float(fast.kl(1e5)) == pytest.approx(float(expected.detach()), rel=1e-5)
        for param, grad in zip(trainable, grads, strict=True):
            # Float rounding, summed in another order: small next to the largest entry.
            scale = float(grad.abs().max())
            torch.testing.assert_close(param.grad, grad, rtol=1e-4, atol=1e-5 * scale)
    assert batches.taken == 2 * batches.batches + 1
