"""The capabilities stage in the plan: which targets lm-evaluation-harness runs on, what each job
reads and what decides it; a bad `capabilities` section stops the dry run with one sentence.
(Which jobs a change reruns in a finished workflow: tests/workflow/test_workflow.py.)"""

from __future__ import annotations

import pytest
import yaml
from test_plan import BASE, FINANCIAL, INOCULATED, MIXED, TINY, demo
from workflow_copy import copy_workflow, snakemake

from emflow.workflow.capability_plan import capability_inputs, capability_params

RUNS = [f"runs/{FINANCIAL}", *(f"runs/{MIXED}/seed{s}" for s in range(3)), f"runs/{INOCULATED}"]


def test_the_base_model_and_every_run_are_evaluated_once(workdir):
    plan = demo()
    outputs = plan.capability_outputs()
    assert outputs == [
        *(f"results/demo/{t}/capabilities.json" for t in (BASE, *RUNS)),
        "results/demo/summary_capabilities.png",
    ]
    assert set(outputs) <= set(plan.final_outputs())
    inputs = plan.results_inputs(MIXED)
    assert inputs["capabilities_base"] == f"results/demo/{BASE}/capabilities.json"
    assert inputs["capabilities"] == [
        f"results/demo/runs/{MIXED}/seed{s}/capabilities.json" for s in range(3)
    ]
    assert set(inputs["capabilities"]) <= set(plan.summary_inputs()["capabilities"])


def test_steps_and_scales_are_opt_in_targets_not_params(workdir):
    overlay = {"capabilities": {"tasks": [{"name": "emflow_mc"}], "steps": True, "scales": True}}
    plan = demo(overlay)
    step = f"runs/{FINANCIAL}/step-8"
    assert f"results/demo/{step}/capabilities.json" in plan.capability_outputs()
    assert (
        capability_inputs(plan, step)["adapter"] == f"results/demo/runs/{FINANCIAL}/step_adapters"
    )
    assert capability_inputs(plan, BASE) == {"model": plan.model_inputs(TINY)}
    params = capability_params(plan, plan.config["capabilities"], step)
    assert params["step"] == 8 and params["scale"] is None and params["model"] == TINY
    # The keys that pick targets are not the jobs' params: turning them on reruns no job.
    plain = demo({"capabilities": {"tasks": [{"name": "emflow_mc"}]}})
    run = f"runs/{FINANCIAL}"
    assert capability_params(plan, plan.config["capabilities"], run) == capability_params(
        plain, plain.config["capabilities"], run
    )
    # Llama 3's template writes a date into every prompt: the workflow's pins it.
    assert params["settings"]["chat_template_kwargs"] == {"date_string": "26 Jul 2024"}


def test_without_the_section_nothing_is_planned_and_results_read_what_they_did(workdir):
    plan = demo({"capabilities": None})
    assert plan.capabilities is None and plan.capability_outputs() == []
    assert not any("capabilit" in key for key in plan.results_inputs(FINANCIAL))
    assert "capabilities" not in plan.summary_inputs()


@pytest.fixture(scope="module")
def fresh_copy(tmp_path_factory):
    return copy_workflow(tmp_path_factory.mktemp("capabilities") / "emflow")


@pytest.mark.parametrize(
    "section, message",
    [
        (
            {"tasks": [{"name": "emflow_mc", "limt": 5}]},
            "unknown key 'capabilities.tasks[0].limt'",
        ),
        (
            {"tasks": [{"name": "emflow_mcq"}]},
            "capabilities.tasks[0].name 'emflow_mcq' is not a task, group or tag lm_eval knows",
        ),
        ({"tasks": [{"name": "emflow_mc", "limit": -1}]}, "capabilities.tasks[0].limit"),
        ({"tasks": []}, "capabilities.tasks is []"),
    ],
    ids=["unknown key", "unknown task", "bad limit", "no tasks"],
)
def test_a_bad_capabilities_section_stops_the_dry_run_in_one_sentence(fresh_copy, section, message):
    (fresh_copy / "overlay.yaml").write_text(yaml.safe_dump({"capabilities": section}))
    result = snakemake(
        fresh_copy, "-n", "--profile", "profiles/demo", "--configfile", "config/demo.yaml",
        "overlay.yaml",
    )  # fmt: skip
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("emflow: ")]
    assert len(lines) == 1 and message in lines[0], result.stderr[-2000:]
    assert "overlay.yaml" in lines[0] or "config/demo.yaml" in lines[0]
