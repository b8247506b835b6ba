"""The workflow config (config/config.yaml and the files merged over it): its schema, read and
checked as Snakemake reads it, each error one sentence; and each stage's section as the stage's
settings dataclass, whose fields hold the defaults and mark the plumbing.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from emflow.errors import EmflowError
from emflow.question_specs import check_question_specs

T = TypeVar("T")


def with_defaults(
    settings: type, section: dict[str, Any], *, besides: tuple[str, ...] = ("chat_template_kwargs",)
) -> dict[str, Any]:
    """A workflow config section with the defaults of its settings dataclass filled in.

    The stage's settings dataclass (TrainSettings, GenerationSettings, JudgeSettings) is the one
    place a default is written; the schema checks types and ranges. Filling them in before the
    rules slice their params keeps a key given at its default value from rerunning anything.
    Fields named in `besides` come from elsewhere in the config (chat_template_kwargs is shared
    by every stage, at the top level).
    """
    defaults = {}
    for f in dataclasses.fields(settings):
        if f.name in besides:
            continue
        if f.default is not dataclasses.MISSING:
            defaults[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            defaults[f.name] = f.default_factory()
    # Tuples become lists, as they would be if written in the YAML file.
    defaults = {k: list(v) if isinstance(v, tuple) else v for k, v in defaults.items()}
    return defaults | section


def settings_from(settings: type[T], section: Mapping[str, Any]) -> T:
    """A stage's settings dataclass from its workflow config section (and the keys the rules add,
    such as chat_template_kwargs); keys that are not its fields (`threads`, `questions`,
    `prompts`, `cache`) are the workflow's own and are left out."""
    names = {f.name for f in dataclasses.fields(settings)}
    return settings(**{k: v for k, v in section.items() if k in names})


def plumbing_fields(settings: type) -> tuple[str, ...]:
    """The fields of a stage's settings dataclass marked `metadata={"plumbing": True}`: they
    change how a job runs (threads, cache, concurrency, retries), never what it produces, so the
    rules leave them out of the params that decide reruns."""
    return tuple(f.name for f in dataclasses.fields(settings) if f.metadata.get("plumbing"))


# The workflow config's JSON schema: the Snakefile and `emflow summary` validate with this file.
WORKFLOW_SCHEMA = Path(__file__).parent / "schemas" / "config.schema.yaml"
# The workflow config the Snakefile names (`configfile:`); `--configfile` files merge over it.
DEFAULT_WORKFLOW_CONFIG = "config/config.yaml"


def config_source(configfiles: Sequence[str | Path], *, replace_workflow_config: bool) -> str:
    """How messages name the workflow config Snakemake built: its files in merge order (the
    Snakefile's config/config.yaml, then each --configfile), relative to the working directory."""
    files = [] if replace_workflow_config else [Path(DEFAULT_WORKFLOW_CONFIG)]
    for file in map(Path, configfiles):
        if file.is_absolute() and file.is_relative_to(Path.cwd()):
            file = file.relative_to(Path.cwd())
        if file not in files:
            files.append(file)
    return " + ".join(map(str, files))


def check_workflow_config(config: Any, source: str) -> None:
    """Fail with one sentence naming `source`, the key and the accepted values when `config`
    breaks the workflow schema (Snakemake's own validate prints jsonschema's whole dump).

    The question sets are checked first by emflow.questions, whose messages name the set.
    """
    # jsonschema comes with Snakemake, which runs this; the rule scripts' environments lack it.
    import jsonschema

    if not isinstance(config, dict):
        raise EmflowError(f"{source}: the workflow config must be a mapping of keys and values.")
    generation = config.get("generation")
    if isinstance(generation, dict) and "questions" in generation:
        try:
            check_question_specs(
                generation["questions"],
                samples_per_question=generation.get("samples_per_question", 1),
            )
        except EmflowError as err:
            raise EmflowError(f"{source}: {err}") from None
    schema = yaml.safe_load(WORKFLOW_SCHEMA.read_text(encoding="utf-8"))
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(config))
    if errors:
        error = jsonschema.exceptions.best_match(errors)
        raise EmflowError(f"{source}: {_describe_schema_error(error)}.")


def _key_path(parts: Any) -> str:
    path = ""
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path


def _describe_schema_error(error: Any) -> str:
    """jsonschema's error as a clause naming the key and what it accepts."""
    key = _key_path(error.absolute_path)
    where = f"key '{key}'" if key else "the config"
    rule, value, schema = error.validator, error.validator_value, error.schema
    got = error.instance
    if rule == "additionalProperties":
        known = sorted(schema.get("properties", {}))
        unknown = sorted(str(k) for k in got if k not in schema.get("properties", {}))
        guess = difflib.get_close_matches(unknown[0], known, n=1)
        hint = f"did you mean '{guess[0]}'?" if guess else f"known keys: {', '.join(known)}"
        inside = f" in '{key}'" if key else ""
        return f"unknown key '{unknown[0]}'{inside} ({hint})"
    if rule == "required":
        missing = next(k for k in value if k not in got)
        return f"{where} lacks the required key '{missing}'; add it"
    if rule == "type":
        types = value if isinstance(value, list) else [value]
        words = {"integer": "an integer", "number": "a number", "string": "a string",
                 "boolean": "true or false", "array": "a list", "object": "a mapping",
                 "null": "null"}  # fmt: skip
        accepted = " or ".join(words.get(t, t) for t in types)
        return f"{where} is {got!r}; it must be {accepted}"
    if rule == "enum":
        return f"{where} is {got!r}; use one of {', '.join(map(str, value))}"
    bounds = {"minimum": "at least", "maximum": "at most",
              "exclusiveMinimum": "greater than", "exclusiveMaximum": "less than"}  # fmt: skip
    if rule in bounds:
        return f"{where} is {got!r}; it must be {bounds[rule]} {value}"
    if rule in ("minItems", "minProperties"):
        entries = "entry" if value == 1 else "entries"
        return f"{where} is empty or too short; give at least {value} {entries}"
    if rule == "pattern":
        return f"{where} is {got!r}; use letters, digits and '_' only (pattern {value})"
    if rule == "oneOf":
        forms = [" + ".join(option.get("required", [])) for option in value]
        return f"{where} must take exactly one of these forms: {'; '.join(forms)}"
    return f"{where}: {error.message}"


def read_workflow_config(
    configfiles: str | Path | list[str | Path],
    *,
    replace_workflow_config: bool = False,
    workflow_config: str | Path = DEFAULT_WORKFLOW_CONFIG,
) -> dict[str, Any]:
    """The workflow config as Snakemake builds it: `workflow_config` (the Snakefile's
    `configfile:`), then each of `configfiles` merged over it key by key (an overlay such as
    config/paper.yaml), or the files alone with `replace_workflow_config` (Snakemake's
    --replace-workflow-config, as profiles/demo sets it). Validated, with the schema's defaults."""
    # Snakemake's own merge, so that this config is the one the rules see.
    from snakemake.utils import update_config

    files = [
        Path(f) for f in ([configfiles] if isinstance(configfiles, str | Path) else configfiles)
    ]
    if not replace_workflow_config and Path(workflow_config) not in files:
        files.insert(0, Path(workflow_config))
    config: dict[str, Any] = {}
    for path in files:
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
        except FileNotFoundError:
            raise EmflowError(
                f"{path}: no such workflow config; run from the repository root or pass "
                "--configfile."
            ) from None
        except yaml.YAMLError as err:
            raise EmflowError(f"{path}: not valid YAML ({err}); fix the syntax.") from None
        if not isinstance(data, dict):
            raise EmflowError(f"{path}: the workflow config must be a mapping of keys and values.")
        update_config(config, data)
    validate_workflow_config(config, " + ".join(str(f) for f in files))
    return config


def validate_workflow_config(config: dict[str, Any], source: str) -> None:
    """Check `config` against the schema, in place: emflow's one-sentence errors naming `source`
    first (`check_workflow_config`), then Snakemake's validate, which fills in the schema's
    defaults, so that the rules and `emflow summary` see the same config."""
    from snakemake.utils import validate  # Snakemake runs this; the rule scripts' envs lack it

    check_workflow_config(config, source)
    validate(config, schema=str(WORKFLOW_SCHEMA), set_default=True)
