"""A panel judge's own prompts (judge.panel[i].prompts): checked with one sentence, merged over
the primary's templates, and the only prompt files its judge_panel job reads as inputs."""

from __future__ import annotations

from pathlib import Path

import pytest
from plans import plan_of

from emflow.errors import EmflowError
from emflow.judge.settings import panel_prompt_files, panel_settings
from emflow.workflow.plan import Plan

BASE = "base/results--demo--tiny-llama"
PRIMARY_PROMPTS = {"aligned": "a.txt", "coherent": "c.txt"}


def section(**entry) -> dict:
    return {"prompts": PRIMARY_PROMPTS, "panel": [{"name": "b", **entry}]}


@pytest.mark.parametrize(
    "prompts, message",
    [
        ({"medical": "m.txt"},
         "x.yaml: judge.panel[0].prompts.medical names a metric the judge section does not score "
         "(aligned, coherent); use one of those, or add 'medical' to judge.metrics."),
        (["a.txt"],
         "x.yaml: judge.panel[0].prompts is ['a.txt']; give a mapping of metric to template "
         "file, e.g. {aligned: prompts/aligned_strict.txt}."),
        ({"aligned": 3},
         "x.yaml: judge.panel[0].prompts.aligned is 3; give a template file's path."),
    ],
)  # fmt: skip
def test_a_bad_panel_prompt_is_one_sentence(prompts, message):
    with pytest.raises(EmflowError) as err:
        panel_settings(section(prompts=prompts), "x.yaml")
    assert str(err.value) == message


def test_a_missing_template_file_is_found_only_when_files_are_checked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    judge = section(prompts={"aligned": "strict.txt"})
    panel_settings(judge)  # a job's own check: the plan's inputs name the file
    with pytest.raises(EmflowError, match=r"^x.yaml: judge.panel\[0\].prompts.aligned is "
                       r"strict.txt, which is not a file; give the path"):  # fmt: skip
        panel_settings(judge, "x.yaml", check_files=True)
    Path("strict.txt").write_text("{question} {answer}")
    assert list(panel_settings(judge, "x.yaml", check_files=True)) == ["b"]


def test_own_prompts_replace_only_the_metrics_they_name():
    judge = section(prompts={"aligned": "strict.txt"})
    assert panel_prompt_files(judge, "b") == {"aligned": "strict.txt", "coherent": "c.txt"}
    assert panel_prompt_files(section(), "b") == PRIMARY_PROMPTS
    # A metric only a question set's own judge_prompts define may get the judge's own template.
    judge = section(prompts={"medical": "m.txt"}) | {"metrics": ["aligned", "medical"]}
    assert panel_prompt_files(judge, "b")["medical"] == "m.txt"
    # The prompts decide no JudgeSettings field: the settings are as without them.
    assert panel_settings(judge) == panel_settings(section())


def demo(panel: list[dict]) -> Plan:
    return plan_of("config/demo.yaml", overlay={"judge": {"panel": panel}})


def test_a_panel_judges_own_prompt_files_are_its_inputs_alone(workdir):
    Path("strict.txt").write_text("Strictly: {question} {answer}")
    strict_judge = {"name": "strict", "temperature": 1.0, "prompts": {"aligned": "strict.txt"}}
    plan = demo([{"name": "plain", "temperature": 1.0}, strict_judge])
    primary = plan.judge_inputs(BASE)
    # Without prompts: exactly the inputs and params of a panel judge before judge.panel.prompts.
    assert plan.panel_judge_inputs(BASE, "plain") == primary
    strict = plan.panel_judge_inputs(BASE, "strict")
    assert strict == primary | {"aligned": "strict.txt"}
    assert plan.panel_judge_params("strict") == plan.panel_judge_params("plain")
    # The primary's own inputs do not name the panel judge's template.
    assert "strict.txt" not in primary.values()
