"""The question sets as the workflow config lists them (`generation.questions`): each spec's
keys, types and values checked before any file is read, each problem one sentence naming the
set and the key."""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from emflow.errors import EmflowError

SPEC_KEYS = (
    "name",
    "path",
    "count",
    "samples",
    "max_new_tokens",
    "system",
    "system_mode",
    "exclude",
    "training_prompt",
)
SYSTEM_MODES = ("replace", "add_if_missing")
# The schema's pattern for a set name (a .txt set's question ids start with it).
SET_NAME = r"[A-Za-z0-9_]+"
# What a spec key accepts, for the messages that ask for it.
SPEC_HELP = {
    "name": "a name of letters, digits and underscores",
    "path": "the path of a .txt file (one question per line) or of a .yaml/.yml file in the EM "
    "papers' format",
    "exclude": "a list of non-empty strings (parts of question ids to leave out), e.g. "
    "[_json, _template]",
}
YAML_SUFFIXES = (".yaml", ".yml")


def check_question_specs(specs: Any, *, samples_per_question: Any = 1) -> None:
    """Check `generation.questions` as the workflow config writes it, without reading the files.

    Each problem is one sentence naming `generation.questions[<i>]`, the set, the key and the
    values it accepts (the workflow calls this before its schema, whose messages name neither).
    """
    if specs is None:
        raise EmflowError(
            "generation.questions is empty; list the question sets under it, each as "
            "'- name: <set>' with 'path: <file>'."
        )
    if not isinstance(specs, (list, tuple)):
        raise EmflowError(
            f"generation.questions is {shown(specs)}, not a list of question sets; write each "
            "set as '- name: <set>' with 'path: <file>' under it."
        )
    if not specs:
        raise EmflowError(
            "generation.questions lists no question set; add one as '- name: <set>' with "
            "'path: <file>'."
        )
    if samples_per_question is not None and not positive_int(samples_per_question):
        raise EmflowError(
            f"generation.samples_per_question is {shown(samples_per_question)}; use a whole "
            "number of at least 1."
        )
    first_index: dict[str, int] = {}  # set name -> the index of the spec that has it
    for index, spec in enumerate(specs):
        _check_spec(index, spec)
        if spec["name"] in first_index:
            raise EmflowError(
                f"generation.questions[{index}]: key 'name' is '{spec['name']}', which "
                f"generation.questions[{first_index[spec['name']]}] already uses; give each "
                "set a unique name."
            )
        first_index[spec["name"]] = index


def _check_spec(index: int, spec: Any) -> None:
    """One `generation.questions` entry: the keys, their types and values, not the file."""
    where = f"generation.questions[{index}]"
    if not isinstance(spec, Mapping):
        raise EmflowError(
            f"{where} is {shown(spec)}, not a question set; write it as '- name: <set>' with "
            "'path: <file>' under it."
        )
    name = spec.get("name")
    valid_name = isinstance(name, str) and re.fullmatch(SET_NAME, name) is not None
    if valid_name:
        where = f"{where} (set '{name}')"
    # Unknown keys first: a misspelt `name` or `path` is then named as such, not as missing.
    for key in spec:
        if key not in SPEC_KEYS:
            if key == "metrics":
                hint = " (the judge config chooses the metrics)"
            else:
                close = difflib.get_close_matches(str(key), SPEC_KEYS, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise EmflowError(f"{where}: unknown key '{key}'{hint}; use {', '.join(SPEC_KEYS)}.")
    for key in ("name", "path"):
        if key not in spec:
            raise EmflowError(f"{where}: key '{key}' is missing; add {SPEC_HELP[key]}.")
    if not valid_name:
        suggestion = (
            re.sub(r"[^A-Za-z0-9_]+", "_", name).strip("_") if isinstance(name, str) else ""
        )
        example = f", e.g. '{suggestion}'" if suggestion else ""
        raise EmflowError(
            f"{where}: key 'name' is {shown(name)}; use only letters, digits and "
            f"underscores{example}."
        )

    def bad(key: str, fix: str) -> EmflowError:
        return EmflowError(f"{where}: key '{key}' is {shown(spec[key])}; {fix}.")

    path = spec["path"]
    # The suffix chooses the format, so a .json or suffix-less file is refused before any reading.
    if (
        not isinstance(path, str)
        or not path.strip()
        or Path(path).suffix.lower() not in (".txt", *YAML_SUFFIXES)
    ):
        raise bad("path", f"use {SPEC_HELP['path']}")
    for key, default in (
        ("count", "null for all of the file's questions"),
        ("samples", "remove the key for the file's default"),
        ("max_new_tokens", "remove the key for generation.max_new_tokens"),
    ):
        if key in spec and not positive_int(spec[key]):
            if key != "count" or spec[key] is not None:
                raise bad(key, f"use a whole number of at least 1, or {default}")
    if "system" in spec and (not isinstance(spec["system"], str) or not spec["system"].strip()):
        raise bad("system", "write the system prompt as a non-empty string, or remove the key")
    if "system_mode" in spec:
        if spec["system_mode"] not in SYSTEM_MODES:
            raise bad("system_mode", f"use one of {', '.join(SYSTEM_MODES)}")
        if "system" not in spec:
            raise EmflowError(
                f"{where}: key 'system_mode' needs a 'system' prompt; add one, or remove "
                "system_mode."
            )
    if "training_prompt" in spec and not isinstance(spec["training_prompt"], bool):
        raise bad(
            "training_prompt", "use true (a run answers under its training instruction) or false"
        )
    if "exclude" in spec:
        exclude = spec["exclude"]
        if isinstance(exclude, str) and exclude.strip():
            raise bad("exclude", f"write it as a list: [{exclude}]")
        if not isinstance(exclude, list):
            raise bad("exclude", f"use {SPEC_HELP['exclude']}")
        for item in exclude:
            if not isinstance(item, str) or not item:
                raise EmflowError(
                    f"{where}: key 'exclude' holds {shown(item)}; use {SPEC_HELP['exclude']}."
                )


def shown(value: Any) -> str:
    """A config value as the user wrote it in YAML, shortened to fit a sentence."""
    if isinstance(value, str):
        text = f"'{value}'"
    elif value is None or isinstance(value, bool):
        text = {None: "null", True: "true", False: "false"}[value]
    elif isinstance(value, Mapping):
        text = f"a mapping ({', '.join(map(str, value))})"
    else:
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1
