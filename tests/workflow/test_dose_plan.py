"""Adapter dose-response (eval_lora_scales) in the plan: the key's checks, a target per run and
scale made by the generate rule, and what a new scale reruns."""

from __future__ import annotations

import re

import pytest
from conftest import experiment_config
from test_plan import FINANCIAL, INOCULATED, MIXED, TINY, demo, edit_experiment

from emflow.config import parse_experiment_config
from emflow.errors import EmflowError
from emflow.paths import TARGET_PATTERN, scale_name, scale_target, target_run_and_step, target_scale
from emflow.workflow.plan import Plan

SCALES = [0, 0.5, 1, 1.5, 2]


@pytest.mark.parametrize(
    "value", [[], [1, 1.0], [-0.5], [True], ["1"], 2, [float("nan")]], ids=repr
)
def test_bad_scales_are_one_sentence_errors(value):
    with pytest.raises(EmflowError, match=r"^g/e/config.json: 'eval_lora_scales' is .*; give a "
                       r"list of different numbers >= 0 .*\.$"):  # fmt: skip
        parse_experiment_config(experiment_config("m", eval_lora_scales=value), "g/e/config.json")


def test_scales_are_an_evaluation_key_that_never_retrains():
    plain = parse_experiment_config(experiment_config("m"), "c")
    scaled = parse_experiment_config(experiment_config("m", eval_lora_scales=SCALES), "c")
    assert scaled.eval_lora_scales == SCALES
    assert scaled.training_params() == plain.training_params()


def test_a_scale_target_is_read_by_position():
    assert [scale_name(s) for s in (0, 0.5, 1.0, 2, 1e-5)] == ["0", "0.5", "1", "2", "0.00001"]
    assert scale_target("g/e/seed1", 1.5) == "runs/g/e/seed1/scale-1.5"
    assert target_scale("runs/g/e/seed1/scale-1.5") == ("g/e/seed1", 1.5)
    assert target_run_and_step("runs/g/e/scale-0.5") == ("g/e", None)
    # An experiment may itself be named scale-<s>: two folders are a run, never a scale.
    assert target_scale("runs/g/scale-1") is None
    assert target_run_and_step("runs/g/scale-1") == ("g/scale-1", None)
    assert target_scale("runs/g/scale-1/scale-2") == ("g/scale-1", 2.0)
    assert target_scale("runs/g/e/step-8") is None


def test_each_scale_of_each_run_is_a_target_of_the_generate_rule(workdir):
    edit_experiment(MIXED, eval_lora_scales=SCALES)
    plan = demo()
    assert plan.doses == {MIXED: SCALES}
    targets = [t for t in plan.generation_targets if "/scale-" in t]
    assert targets == [f"runs/{MIXED}/seed{s}/scale-{x}" for s in (0, 1, 2)
                       for x in ("0", "0.5", "1", "1.5", "2")]  # fmt: skip
    for target in targets:
        assert plan.generation_targets[target] == (TINY, target.split("/", 1)[1].rsplit("/", 1)[0])
    one_by_one = re.compile(plan.generated_one_by_one)
    assert all(one_by_one.fullmatch(t) and re.fullmatch(TARGET_PATTERN, t) for t in targets)
    target = f"runs/{MIXED}/seed1/scale-1.5"
    # The run's final adapter, the run's own params plus the scale: nothing else differs.
    run = f"runs/{MIXED}/seed1"
    assert plan.generate_inputs(target) == plan.generate_inputs(run)
    assert plan.generation_params(target) == plan.generation_params(run) | {"lora_scale": 1.5}
    assert plan.judge_inputs(target)["generations"] == f"results/demo/{target}/generations.csv"
    points = plan.dose_points(MIXED)
    assert [(p["seed"], p["scale"]) for p in points] == [(s, x) for s in (0, 1, 2) for x in SCALES]
    assert points[0]["judged"] == f"results/demo/runs/{MIXED}/seed0/scale-0/judged.csv"
    assert plan.results_inputs(MIXED)["dose"] == f"experiments/{MIXED}/dose.csv"
    assert f"experiments/{MIXED}/dose.png" in plan.final_outputs()
    # The other experiments plan as before.
    assert "dose" not in plan.results_inputs(FINANCIAL)
    assert not any(f"{INOCULATED}/scale" in t for t in plan.generation_targets)


def test_a_scale_changes_no_params_but_its_own_targets(workdir):
    before = demo()
    edit_experiment(MIXED, eval_lora_scales=SCALES)
    after = demo()
    for run in before.runs:
        assert after.train_params(run) == before.train_params(run)
    for target in before.generation_targets:
        assert after.generation_params(target) == before.generation_params(target)
        assert after.generate_inputs(target) == before.generate_inputs(target)
    assert after.judge_params() == before.judge_params()
    assert set(after.generation_targets) - set(before.generation_targets) == {
        scale_target(f"{MIXED}/seed{s}", x) for s in (0, 1, 2) for x in SCALES
    }


def test_sweep_in_one_job_answers_every_scale_of_a_run_in_one_job(workdir):
    """generation.sweep_in_one_job: rule generate_doses answers at every scale of a run with
    one model load (its params: the run's own and the scales); the generate rule then leaves
    the scale targets to it."""
    edit_experiment(MIXED, eval_lora_scales=[0, 2])
    plan = demo({"generation": {"sweep_in_one_job": True}})
    run = f"{MIXED}/seed1"
    assert plan.dose_runs == {f"{MIXED}/seed{s}" for s in (0, 1, 2)}
    assert plan.generate_doses_params(run) == plan.generation_params(f"runs/{run}") | {
        "scales": [0, 2]
    }
    assert not re.fullmatch(plan.generated_one_by_one, f"runs/{run}/scale-2")
    assert re.fullmatch(plan.generated_one_by_one, f"runs/{run}")
    assert re.fullmatch(demo().generated_one_by_one, f"runs/{run}/scale-2")


def test_the_openai_backend_refuses_scales(workdir):
    edit_experiment(FINANCIAL, eval_lora_scales=[0, 2])
    with pytest.raises(EmflowError, match=rf"^experiments/{FINANCIAL}/config.json: "
                       r"eval_lora_scales needs a local generation backend"):  # fmt: skip
        demo({"generation": {"backend": "openai", "openai_model": "org/{run}"}})
    assert isinstance(demo(), Plan)
