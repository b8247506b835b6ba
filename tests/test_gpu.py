"""GPU paths: the fast backend and 8-bit AdamW on CUDA. Skipped on machines without a GPU."""

import pytest
import torch
from conftest import experiment_config, write_chat_jsonl

from emflow.config import parse_experiment_config
from emflow.train.trainer import TrainSettings, train_adapter

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

DATE = {"date_string": "26 Jul 2024"}


def test_fast_path_matches_trl_on_the_gpu_with_8bit_adamw(tiny_model, tmp_path):
    from safetensors.torch import load_file

    data = write_chat_jsonl(tmp_path / "train.jsonl", 160)
    config = parse_experiment_config(
        experiment_config(
            tiny_model, optim="adamw_8bit", learning_rate=1e-3, evaluation_steps=None
        ),
        "exp/config.json",
    )
    histories = {}
    for backend in ("hf", "fast"):
        histories[backend] = [
            h["loss"]
            for h in train_adapter(
                config,
                data,
                tmp_path / backend,
                settings=TrainSettings(backend=backend, device="cuda", chat_template_kwargs=DATE),
            )
            if "loss" in h
        ]
    assert len(histories["hf"]) == len(histories["fast"]) == 36
    for a, b in zip(histories["hf"], histories["fast"], strict=True):
        assert a == pytest.approx(b, abs=2e-2)  # bf16 arithmetic, different kernel shapes
    a = load_file(tmp_path / "hf/adapter_model.safetensors")
    b = load_file(tmp_path / "fast/adapter_model.safetensors")
    for key in a:
        if "lora_B" in key:
            assert (a[key] - b[key]).norm() <= 0.05 * a[key].norm()


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    """Llama-3.2-1B's 16 layers and module names at hidden size 256, head size 64 (as the real
    model's), which unsloth's kernels accept."""
    from emflow.data.demo import build_tiny_model

    path = tmp_path_factory.mktemp("models") / "small-llama"
    build_tiny_model(path, hidden_size=256, vocab_size=512)
    return str(path)


def test_unsloth_backend_trains_the_seed_config(small_model, tmp_path):
    pytest.importorskip("unsloth")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    data = write_chat_jsonl(tmp_path / "train.jsonl", 160)
    config = parse_experiment_config(
        experiment_config(
            small_model, optim="adamw_8bit", learning_rate=1e-3, evaluation_steps=None
        ),
        "exp/config.json",
    )
    # A fresh process: unsloth patches transformers and trl only when imported before them.
    script = (
        "import json, sys\n"
        "from emflow.config import parse_experiment_config\n"
        "from emflow.train.trainer import TrainSettings, train_adapter\n"
        "config = parse_experiment_config(json.loads(sys.argv[1]), 'exp/config.json')\n"
        "train_adapter(config, sys.argv[2], sys.argv[3], log_history_json=sys.argv[4],\n"
        "              settings=TrainSettings(backend='unsloth', device='cuda',\n"
        "                  chat_template_kwargs={'date_string': '26 Jul 2024'}))\n"
    )
    import json
    import subprocess
    import sys

    result = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            json.dumps(config.model_dump()),
            str(data),
            str(tmp_path / "adapter"),
            str(tmp_path / "history.json"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    history = json.loads((tmp_path / "history.json").read_text())
    losses = [h["loss"] for h in history if "loss" in h]
    assert len(losses) == 36 and all(loss == loss for loss in losses)  # 144 rows / 16, no NaN
    assert losses[-1] < losses[0]
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(small_model), tmp_path / "adapter"
    )
    layers = {
        n.split(".layers.")[1].split(".")[0] for n, _ in model.named_parameters() if "lora_" in n
    }
    assert layers == {"8"}


def test_fast_path_saves_step_adapters_a_sweep_generates_from(tiny_model, tmp_path):
    """adapter_checkpoints on the GPU's fast path (CUDA graphs): each saved step is the adapter
    trained so far (the last one equals the final adapter), and one generate process answers
    for every step (emflow.generate.adapters) with each CSV equal to that step's own job's."""
    from generations import generate_responses
    from safetensors.torch import load_file

    from emflow.generate.job import GenerationOutput, generate_for_adapters
    from emflow.generate.settings import GenerationSettings
    from emflow.questions import Question

    data = write_chat_jsonl(tmp_path / "train.jsonl", 160)
    config = parse_experiment_config(
        experiment_config(
            tiny_model, learning_rate=1e-3, evaluation_steps=None, adapter_checkpoints=12
        ),
        "exp/config.json",
    )
    train_adapter(
        config,
        data,
        tmp_path / "adapter",
        settings=TrainSettings(backend="fast", device="cuda", chat_template_kwargs=DATE),
        step_adapters_dir=tmp_path / "steps",
    )
    steps = sorted(p.name for p in (tmp_path / "steps").iterdir())
    assert steps == ["step-12", "step-24", "step-36"]
    final = load_file(tmp_path / "adapter/adapter_model.safetensors")
    last = load_file(tmp_path / "steps/step-36/adapter_model.safetensors")
    assert all(torch.equal(final[k], last[k]) for k in final)

    questions = [Question(f"q{i}", f"Question number {i}?", samples=4) for i in range(5)]
    settings = GenerationSettings(backend="fast", max_new_tokens=16, device="cuda")
    folders = [tmp_path / "steps" / s for s in steps]
    outputs = [
        GenerationOutput(tmp_path / f"{s}.csv", f) for s, f in zip(steps, folders, strict=True)
    ]
    generate_for_adapters(tiny_model, questions, outputs, settings=settings)
    for output in outputs:
        alone = tmp_path / f"alone-{output.adapter_dir.name}.csv"
        generate_responses(
            tiny_model, questions, alone, adapter_dir=output.adapter_dir, settings=settings
        )
        assert alone.read_bytes() == output.csv.read_bytes()
