"""Capability checks through the real lm-evaluation-harness on the tiny model (CPU): emflow's own
emflow_mc task on the base model and on LoRA adapters, the results file, and the settings'
one-sentence errors."""

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from emflow.capabilities.harness import evaluate_capabilities
from emflow.capabilities.settings import CapabilitySettings, CapabilityTask, capability_settings
from emflow.errors import EmflowError

REPO = Path(__file__).resolve().parents[2]
TASKS = REPO / "config" / "capabilities"
ITEMS = len((TASKS / "emflow_mc" / "emflow_mc.jsonl").read_text().splitlines())


def _settings(*tasks: dict, **keys) -> CapabilitySettings:
    section = {
        "tasks": list(tasks) or [{"name": "emflow_mc"}],
        "include_path": [str(TASKS)],
        "device": "cpu",
        "chat_template_kwargs": {"date_string": "26 Jul 2024"},
    }
    return capability_settings(section | keys, source="config.yaml")


def _adapter(model_dir: str, path: Path, *, b_std: float) -> str:
    """A LoRA adapter of the tiny model with random A and B ~ N(0, b_std) (0: all-zero B)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(7)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"])
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=b_std) if b_std else param.zero_()
    peft_model.save_pretrained(path)
    return str(path)


def _loglikelihoods(results: dict) -> list[float]:
    """Each item's log-likelihood of each of its choices, as the harness logged them."""
    return [ll for s in results["samples"]["emflow_mc"] for ll, _ in s["filtered_resps"]]


def test_base_and_adapters_through_the_harness(tiny_model, tmp_path, monkeypatch):
    """The harness's results for the base and for adapters: acc with its stderr over every
    item; a non-zero B changes the per-item log-likelihoods, a zero B or a zero scale does not."""
    monkeypatch.chdir(tmp_path)  # the task's rows are found from any working directory
    settings = _settings()
    base = evaluate_capabilities(tiny_model, None, settings, "base/capabilities.json", log=print)
    assert json.loads((tmp_path / "base/capabilities.json").read_text()) == base
    scores = base["results"]["emflow_mc"]
    per_item = [s["acc"] for s in base["samples"]["emflow_mc"]]
    assert base["n-samples"]["emflow_mc"] == {"original": ITEMS, "effective": ITEMS}
    assert len(per_item) == ITEMS
    assert scores["acc,none"] == pytest.approx(statistics.mean(per_item))
    assert scores["acc_stderr,none"] == pytest.approx(
        statistics.stdev(per_item) / len(per_item) ** 0.5
    )
    assert "acc_norm,none" in scores and "acc_norm_stderr,none" in scores
    assert base["higher_is_better"]["emflow_mc"] == {"acc": True, "acc_norm": True}
    assert base["n-shot"] == {"emflow_mc": 0} and base["versions"] == {"emflow_mc": 1.0}
    assert base["configs"]["emflow_mc"]["output_type"] == "multiple_choice"
    assert base["config"]["device"] == "cpu" and base["config"]["batch_size"] == 8
    assert base["emflow"] | {"lm_eval_version": None} == {
        "model": tiny_model,
        "adapter": None,
        "scale": None,
        "tasks": [{"name": "emflow_mc", "num_fewshot": None, "limit": None}],
        "apply_chat_template": True,
        "fewshot_as_multiturn": False,
        "chat_template_kwargs": {"date_string": "26 Jul 2024"},
        "lm_eval_version": None,
    }
    assert base["emflow"]["lm_eval_version"] == "0.4.13"
    assert "pretty_env_info" not in base and "git_hash" not in base

    trained = _adapter(tiny_model, tmp_path / "trained", b_std=0.5)
    run = evaluate_capabilities(tiny_model, trained, settings, "run.json")
    assert run["emflow"]["adapter"] == trained
    assert _loglikelihoods(run) != _loglikelihoods(base)

    untrained = _adapter(tiny_model, tmp_path / "untrained", b_std=0.0)
    zero = evaluate_capabilities(tiny_model, untrained, settings, "zero.json")
    assert _loglikelihoods(zero) == _loglikelihoods(base)

    # A dose-response target: scale 0 is the base model exactly, scale 1 the run's adapter
    # (merged into the weights rather than applied beside them: equal up to rounding).
    dose0 = evaluate_capabilities(tiny_model, trained, settings, "dose0.json", scale=0.0)
    assert dose0["emflow"]["scale"] == 0.0
    assert _loglikelihoods(dose0) == _loglikelihoods(base)
    dose1 = evaluate_capabilities(tiny_model, trained, settings, "dose1.json", scale=1.0)
    assert _loglikelihoods(dose1) == pytest.approx(_loglikelihoods(run), rel=1e-4)


def test_limit_and_fewshot_per_task(tiny_model, tmp_path):
    """A task's `limit` (a count or a fraction) and `num_fewshot` reach the harness."""
    results = evaluate_capabilities(
        tiny_model,
        None,
        _settings({"name": "emflow_mc", "limit": 5, "num_fewshot": 2}),
        str(tmp_path / "limit.json"),
    )
    assert results["n-samples"]["emflow_mc"] == {"original": ITEMS, "effective": 5}
    assert len(results["samples"]["emflow_mc"]) == 5
    assert results["n-shot"] == {"emflow_mc": 2}
    half = evaluate_capabilities(
        tiny_model,
        None,
        _settings({"name": "emflow_mc", "limit": 0.5}),
        str(tmp_path / "half.json"),
    )
    assert half["n-samples"]["emflow_mc"]["effective"] == ITEMS // 2


def test_a_failed_evaluation_leaves_no_results_file(tiny_model, tmp_path):
    """An error mid-job (here a task the harness cannot load) leaves the earlier file as it was
    and no temporary file behind."""
    output = tmp_path / "out" / "capabilities.json"
    output.parent.mkdir()
    output.write_text("earlier results\n")
    broken = CapabilitySettings(
        tasks=(CapabilityTask("emflow_mc"), CapabilityTask("no_such_task")),
        include_path=(str(TASKS),),
        device="cpu",
    )
    with pytest.raises(KeyError, match="no_such_task"):
        evaluate_capabilities(tiny_model, None, broken, str(output))
    assert output.read_text() == "earlier results\n"
    assert [p.name for p in output.parent.iterdir()] == ["capabilities.json"]


def test_offline_from_another_directory(tiny_model, tmp_path):
    """With the Hub and datasets offline, from a folder with no config/, the shipped task runs."""
    code = (
        "from emflow.capabilities.harness import evaluate_capabilities; "
        "from emflow.capabilities.settings import capability_settings; "
        f"s = capability_settings({{'tasks': [{{'name': 'emflow_mc', 'limit': 3}}], "
        f"'include_path': [{str(TASKS)!r}], 'device': 'cpu'}}, source='c.yaml'); "
        f"evaluate_capabilities({tiny_model!r}, None, s, 'out.json', log=lambda m: None)"
    )
    env = os.environ | {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=True)
    results = json.loads((tmp_path / "out.json").read_text())
    assert results["n-samples"]["emflow_mc"]["effective"] == 3


def test_no_section_is_off_and_defaults_fill_in():
    assert capability_settings(None, source="config.yaml") is None
    settings = capability_settings(
        {"tasks": [{"name": "emflow_mc"}]}, source="config.yaml", check_tasks=False
    )
    assert settings == CapabilitySettings(tasks=(CapabilityTask("emflow_mc"),))
    assert (settings.batch_size, settings.device, settings.dtype) == (8, "auto", "auto")
    assert settings.include_path == ("config/capabilities",)
    assert settings.apply_chat_template and not settings.fewshot_as_multiturn


@pytest.mark.parametrize(
    ("change", "names"),
    [
        ({"batchsize": 4}, "unknown key 'capabilities.batchsize' (did you mean 'batch_size'?)"),
        ({"tasks": [{"name": "emflow_mcq"}]}, "capabilities.tasks[0].name 'emflow_mcq'"),
        ({"tasks": [{"name": "emflow_mc", "limit": 0}]}, "capabilities.tasks[0].limit is 0"),
        ({"tasks": [{"name": "emflow_mc", "limit": 1.5}]}, "capabilities.tasks[0].limit is 1.5"),
        ({"tasks": [{"name": "emflow_mc", "limt": 5}]}, "unknown key 'capabilities.tasks[0].limt"),
        ({"tasks": [{"name": "emflow_mc", "num_fewshot": -1}]}, "tasks[0].num_fewshot is -1"),
        ({"tasks": [{"name": "emflow_mc"}, {"name": "emflow_mc"}]}, "tasks[1].name 'emflow_mc'"),
        ({"tasks": []}, "capabilities.tasks is []"),
        ({"include_path": ["no/such/folder"]}, "capabilities.include_path[0] 'no/such/folder'"),
        ({"batch_size": 0}, "capabilities.batch_size is 0"),
        ({"device": "tpu"}, "capabilities.device is 'tpu'"),
        ({"steps": "yes"}, "capabilities.steps is 'yes'"),
        ({"apply_chat_template": False, "fewshot_as_multiturn": True}, "fewshot_as_multiturn"),
    ],
)
def test_a_bad_section_is_one_sentence_naming_the_key(change, names):
    section = {"tasks": [{"name": "emflow_mc"}], "include_path": [str(TASKS)]} | change
    with pytest.raises(EmflowError) as error:
        capability_settings(section, source="config/config.yaml")
    message = str(error.value)
    assert message.startswith("config/config.yaml: ") and names in message
    assert "\n" not in message and message.endswith((".", "?)."))


def test_an_unknown_task_suggests_the_close_name():
    section = {"tasks": [{"name": "emflow_mcq"}], "include_path": [str(TASKS)]}
    with pytest.raises(EmflowError, match="did you mean 'emflow_mc'"):
        capability_settings(section, source="config.yaml")
