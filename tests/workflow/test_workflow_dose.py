"""Adapter dose-response in the real workflow (eval_lora_scales), on one demo experiment: scale 1
answers exactly as the run, scale 0 as the base model, and a new scale schedules only itself.

One Snakemake build of one experiment's results.md (the tiny model, on the CPU), then dry runs
on it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from workflow_copy import copy_workflow, pending_outputs, snakemake

pytestmark = pytest.mark.workflow

EXPERIMENT = "demo/mixed_r16_layer8_inoculated"  # one run, no sweep: the cheapest to build
RESULTS = f"experiments/{EXPERIMENT}/results.md"
RUN = f"results/demo/runs/{EXPERIMENT}"
BASE = "results/demo/base/results--demo--tiny-llama"


def set_scales(workdir: Path, scales: list[float]) -> None:
    path = workdir / f"experiments/{EXPERIMENT}/config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"eval_lora_scales": scales}))


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    workdir = copy_workflow(tmp_path_factory.mktemp("dose") / "emflow")
    set_scales(workdir, [0, 1])
    result = snakemake(workdir, "--profile", "profiles/demo", RESULTS)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    return workdir


def test_scale_one_is_the_run_and_scale_zero_the_base_model(built):
    assert (built / f"{RUN}/scale-1/generations.csv").read_bytes() == (
        built / f"{RUN}/generations.csv"
    ).read_bytes()
    assert (built / f"{RUN}/scale-0/generations.csv").read_bytes() == (
        built / f"{BASE}/generations.csv"
    ).read_bytes()
    text = (built / RESULTS).read_text()
    assert "### Adapter dose-response" in text and "![Adapter dose-response](dose.png)" in text
    assert (built / f"experiments/{EXPERIMENT}/dose.png").exists()


def test_a_new_scale_schedules_only_itself_and_the_reports(built):
    assert pending_outputs(built, "--profile", "profiles/demo", RESULTS) == set()
    set_scales(built, [0, 1, 2])
    experiment = f"experiments/{EXPERIMENT}"
    assert pending_outputs(built, "--profile", "profiles/demo", RESULTS) == {
        f"{RUN}/scale-2/generations.csv",
        f"{RUN}/scale-2/judged.csv",
        f"{RUN}/scale-2/judge_usage.json",
        f"{experiment}/dose.csv",
        f"{experiment}/dose.png",
        f"{experiment}/results.md",
        f"{experiment}/question_scores.png",
        f"{experiment}/question_em_rates.png",
    }


def test_sweep_in_one_job_answers_every_scale_in_one_job(tmp_path):
    """generation.sweep_in_one_job: rule generate_doses makes the run's dose folder, and each
    scale's generations come out of it (the rules resolve a scale target unambiguously). A dry
    run of a fresh copy: nothing needs building."""
    copy = copy_workflow(tmp_path / "emflow")
    demo = copy / "config/demo.yaml"
    config = yaml.safe_load(demo.read_text())
    config["generation"]["sweep_in_one_job"] = True
    demo.write_text(yaml.safe_dump(config))
    set_scales(copy, [0, 1, 2])
    pending = pending_outputs(copy, "--profile", "profiles/demo", f"{RUN}/scale-2/judged.csv")
    assert {f"{RUN}/dose_generations", f"{RUN}/scale-2/generations.csv"} <= pending
    assert f"{RUN}/scale-0/generations.csv" not in pending  # only what the target needs
