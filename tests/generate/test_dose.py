"""Adapter dose-response (eval_lora_scales): the run's adapter with its LoRA B matrices times a
scale, every scale of a run answered with one model load. Scale 1 is the run itself (the same
bytes), scale 0 the base model (the same bytes: generation is seeded alike for every target)."""

import pytest
import torch
from test_generate import QUESTIONS, _random_adapter

from emflow.errors import EmflowError
from emflow.generate.backend import GenerationOutput
from emflow.generate.job import generate_for_adapters, generate_job, generate_scales_job
from emflow.generate.settings import GenerationSettings
from emflow.questions import read_question_sets


def _section(backend: str, device: str) -> dict:
    return {
        "questions": QUESTIONS,
        "backend": backend,
        "device": device,
        "max_new_tokens": 6,
        "samples_per_question": 2,
        "temperature": 1.0,  # sampled: the seeded random stream must match too
        "chat_template_kwargs": {"date_string": "26 Jul 2024"},
    }


def _check_doses(tiny_model, tmp_path, backend: str, device: str) -> None:
    adapter = _random_adapter(tiny_model, tmp_path / "adapter", 1, ["q_proj", "down_proj"])
    section = _section(backend, device)
    run, base = tmp_path / "run.csv", tmp_path / "base.csv"
    generate_job(tiny_model, "g/e", section, run, adapter)
    generate_job(tiny_model, None, section, base)
    scales = {s: tmp_path / f"scale-{s}.csv" for s in (2.0, 0.0, 1.0, 0.5)}
    assert generate_scales_job(tiny_model, section, scales, adapter) == [10] * 4  # one load
    assert scales[1.0].read_bytes() == run.read_bytes()
    assert scales[0.0].read_bytes() == base.read_bytes()
    assert scales[2.0].read_bytes() != run.read_bytes()  # the dose changes the answers
    # Each scale in the shared load is what the generate rule's job of that scale alone writes.
    alone = tmp_path / "alone-2.csv"
    generate_job(tiny_model, "g/e", section, alone, adapter, lora_scale=2.0)
    assert alone.read_bytes() == scales[2.0].read_bytes()


@pytest.mark.parametrize("backend", ["hf", "fast"])
def test_scale_one_is_the_run_and_scale_zero_the_base_model(tiny_model, tmp_path, backend):
    _check_doses(tiny_model, tmp_path, backend, "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_fast_backends_doses_on_a_gpu(tiny_model, tmp_path):
    """The fast backend's scale path in bfloat16 on CUDA: the same identities hold."""
    _check_doses(tiny_model, tmp_path, "fast", "cuda")


def test_a_scaled_merge_multiplies_the_update(tiny_model, tmp_path):
    """The merged update at scale s is s times the update at scale 1 (B times s, as Model
    Organisms' load_lora_with_B_multiplied), and taking it out restores the base weights."""
    from transformers import AutoModelForCausalLM

    from emflow.generate.adapters import AdapterSwitch

    adapter = _random_adapter(tiny_model, tmp_path / "adapter", 2, ["down_proj"])
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    weight = model.model.layers[0].mlp.down_proj.weight
    before = weight.detach().clone()
    switch = AdapterSwitch(model)
    with switch.merged_into(adapter):
        delta = weight.detach() - before
    with switch.merged_into(adapter, 1.5):
        torch.testing.assert_close(weight.detach() - before, 1.5 * delta)
    assert torch.equal(weight.detach(), before)


def test_the_openai_backend_refuses_a_scale(tmp_path):
    questions = read_question_sets(QUESTIONS)
    output = GenerationOutput(tmp_path / "x.csv", tmp_path / "adapter", "m", lora_scale=2.0)
    with pytest.raises(EmflowError, match="a served model cannot be rescaled"):
        generate_for_adapters(
            "m", questions, [output], settings=GenerationSettings(backend="openai")
        )
