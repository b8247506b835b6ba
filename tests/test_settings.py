"""Each setting is declared once: a stage's settings dataclass holds its default, its accepted
values and whether it changes results; the workflow config's schema is checked against it here.
"""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from emflow.generate.settings import PLUMBING, GenerationSettings
from emflow.judge.settings import PANEL_KEYS, SCORE_SETTINGS, JudgeSettings
from emflow.report.settings import ReportSettings
from emflow.train.settings import TrainSettings
from emflow.workflow_config import WORKFLOW_SCHEMA, plumbing_fields

SCHEMA = yaml.safe_load(WORKFLOW_SCHEMA.read_text(encoding="utf-8"))

# section: (settings class, the section's keys that are the workflow's own rather than the
# stage's settings, the settings fields the config does not write in this section)
STAGES = {
    "train": (TrainSettings, set(), {"chat_template_kwargs"}),
    "generation": (
        GenerationSettings,
        {"questions", "sweep_samples", "sweep_in_one_job"},
        {"chat_template_kwargs"},
    ),
    # retry_base_delay: the backoff's first delay, for tests; not a user setting.
    "judge": (JudgeSettings, {"prompts", "metrics", "cache", "panel"}, {"retry_base_delay"}),
}


def schema_keys(section: str) -> dict:
    return SCHEMA["properties"][section]["properties"]


@pytest.mark.parametrize("section", STAGES)
def test_the_schema_knows_exactly_the_settings_fields(section):
    settings, own, unwritten = STAGES[section]
    names = {f.name for f in dataclasses.fields(settings)}
    assert set(schema_keys(section)) == (names - unwritten) | own


def test_a_panel_judge_takes_a_name_and_the_primarys_keys_with_their_types():
    """judge.panel's entries: a name and PANEL_KEYS, each checked as the primary's key is."""
    entry = schema_keys("judge")["panel"]["items"]["properties"]
    assert set(entry) == {"name", *PANEL_KEYS}
    for key in PANEL_KEYS:
        assert entry[key] == schema_keys("judge")[key], key


@pytest.mark.parametrize("section", STAGES)
def test_defaults_and_choices_live_in_the_settings(section):
    """The schema checks types and ranges; a default or a list of choices written there too
    would be a second declaration that could drift."""
    settings, _, _ = STAGES[section]
    keys = schema_keys(section)
    for f in dataclasses.fields(settings):
        if f.name not in keys:
            continue
        assert "default" not in keys[f.name], f"{section}.{f.name}: default in the schema"
        choices = f.metadata.get("choices")
        assert keys[f.name].get("enum") == (list(choices) if choices else None), f.name


def test_plumbing_is_marked_on_the_fields():
    """Settings that change how results are fetched, never what they are."""
    assert set(PLUMBING) == {
        "cache",
        "concurrency",
        "max_retries",
        "timeout",
        "openai_n",
        "threads",
    }
    assert set(plumbing_fields(GenerationSettings)) == set(PLUMBING)
    assert "threads" in plumbing_fields(TrainSettings)
    judge = {f.name for f in dataclasses.fields(JudgeSettings)}
    assert set(plumbing_fields(JudgeSettings)) == judge - set(SCORE_SETTINGS)
    assert SCORE_SETTINGS == ("model", "backend", "mode", "temperature", "samples", "parse")


def test_the_report_sections_defaults_are_the_report_settings():
    """Snakemake fills the report section's defaults from the schema; they are the ones
    ReportSettings holds for the jobs."""
    defaults = ReportSettings()
    for name, spec in schema_keys("report").items():
        assert name in {f.name for f in dataclasses.fields(ReportSettings)}, name
        assert spec.get("default") == getattr(defaults, name), name
