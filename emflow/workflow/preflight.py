"""Checks a dry run can make: whatever files already on disk can tell, told before any job runs.

A wrong layer index, a target module or LoRA rank the model cannot take, a question file that is
missing or too short, a mix asking for more rows than a dataset has, a malformed row of a
training file, or a row with its own system message under `training_system_prompt` otherwise
fails inside a job, minutes in (on a cluster, after queueing). The rules call `check_workflow`
when they build the DAG; each problem is one sentence naming the config.json (or workflow config
key) and the fix. Files not on disk yet (the demo's model before it is built, a dataset before it
is decrypted) are left to the jobs, which check them again.

Where the model's tokenizer is on this machine, the dry run also counts the training rows that
`max_seq_length` leaves without any of their answer (emflow.train.rows): they are dropped from
training, which changes the run's optimizer steps; an experiment where every row loses its answer
is an error.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from emflow.config import ExperimentConfig
from emflow.data.datasets import mix_id, read_numbered_chat_jsonl
from emflow.errors import EmflowError
from emflow.inoculation import Inoculation
from emflow.judge.settings import judged_metrics
from emflow.paths import Layout
from emflow.questions import Question, read_question_sets
from emflow.train.examples import drawn_prompts, lost_answers_message, read_rows_for
from emflow.train.model_fit import cached_model_config, check_model_fit, local_model_file
from emflow.train.rows import RowTokenizer, loses_answer, may_fill
from emflow.train.settings import TrainSettings


def _rows(path: Path) -> int:
    """The rows of a chat JSONL file (its non-empty lines)."""
    with path.open("rb") as file:
        return sum(1 for line in file if line.strip())


def dataset_on_disk(name: str, layout: Layout, sources: Mapping[str, str]) -> Path | None:
    """The file behind a dataset of datasets.sources, where one is on disk already: its
    prepared file, or the user's own file it is prepared from."""
    origin = sources[name]
    candidates = [Path(layout.prepared_dataset(name))]
    if origin not in ("upstream", "synthetic"):
        candidates.append(Path(origin))
    return next((c for c in candidates if c.is_file()), None)


def check_data(
    config: ExperimentConfig, source: str, layout: Layout, sources: Mapping[str, str]
) -> None:
    """The experiment's own data files exist and hold valid rows (and, with
    training_system_prompt, no system message of their own); a mix asks for no more rows than a
    dataset already on disk has."""
    for key in ("training_file", "test_file"):
        name = getattr(config, key)
        if name is None:
            continue
        if name in sources:
            file = dataset_on_disk(name, layout, sources)
            if file is not None and config.inoculation_spec is not None:
                read_rows_for(config, file, source)
            continue
        if not Path(name).is_file():
            raise EmflowError(
                f"{source}: {key} is '{name}', which is not a file (nor a dataset of "
                "datasets.sources in the workflow config); fix the path, relative to the "
                "directory Snakemake runs in, or name a dataset."
            )
        # One sentence naming the file and the first bad line (or row with its own system
        # message, which the train job would stop at).
        read_rows_for(config, name, source)
    check_kl_data(config, source, layout, sources)
    for name, wanted in (config.datasets or {}).items():
        if name not in sources:
            continue
        file = dataset_on_disk(name, layout, sources)
        if file is None:
            continue
        if wanted is not None and (available := _rows(file)) < wanted:
            raise EmflowError(
                f"{source}: datasets asks for {wanted} rows of '{name}' but {file} has "
                f"{available}; ask for at most {available} (or null for all)."
            )
        if config.inoculation_spec is not None:
            read_rows_for(config, file, source)


def check_kl_data(
    config: ExperimentConfig, source: str, layout: Layout, sources: Mapping[str, str]
) -> None:
    """With kl_regularization, the KL file exists (where it is on disk already) and holds valid
    chat rows, checked as a training file is (no training_system_prompt applies to it)."""
    name = config.kl_dataset_file
    if not config.kl_regularization or name is None:
        return
    file = dataset_on_disk(name, layout, sources) if name in sources else Path(name)
    if file is None:
        return
    if not file.is_file():
        raise EmflowError(
            f"{source}: kl_dataset_file is '{name}', which is not a file (nor a dataset of "
            "datasets.sources in the workflow config); fix the path, relative to the directory "
            "Snakemake runs in, or name a dataset."
        )
    if not read_numbered_chat_jsonl(file):
        raise EmflowError(f"{source}: kl_dataset_file {file} has no rows; give chat rows.")


# ---------------------------------------------------------------------------------------------
# Rows that lose their whole answer at max_seq_length (see emflow.train.rows)


class AnswerLoss(NamedTuple):
    """Which rows of a training file lose their whole answer: their 0-based positions (`lost`)
    and the 1-based line of each in the file (`lines`), of `rows` rows in all."""

    lost: tuple[int, ...]
    lines: tuple[int, ...]
    rows: int


def answer_loss(
    config: ExperimentConfig, training_file: str | Path, settings: TrainSettings
) -> AnswerLoss | None:
    """The rows of `training_file` that `config.max_seq_length` leaves without any answer, as
    the train job tokenizes them; None when the model's tokenizer is not on this machine (the
    train job counts them then) or a row cannot be tokenized (the job names it)."""
    stat = Path(training_file).stat()
    spec = config.inoculation_spec
    return _answer_loss(
        config.model,
        str(training_file),
        (stat.st_mtime_ns, stat.st_size),
        config.max_seq_length,
        config.train_on_responses_only,
        None if spec is None else spec.model_dump_json(),
        config.seed,
        settings.row_format,
        json.dumps(settings.chat_template_kwargs, sort_keys=True),
    )


@functools.cache
def _answer_loss(
    model: str,
    training_file: str,
    _version: tuple[int, int],  # the file's mtime and size: a changed file is counted again
    max_length: int,
    train_on_responses_only: bool,
    inoculation: str | None,  # Inoculation as JSON
    seed: int,  # draws each row's paraphrase, as the train job does
    row_format: str,
    chat_template_kwargs: str,
) -> AnswerLoss | None:
    if local_model_file(model, "tokenizer_config.json") is None:
        return None
    try:
        numbered = [
            (line, row["messages"]) for line, row in read_numbered_chat_jsonl(training_file)
        ]
    except EmflowError:
        return None  # a bad row: check_data or the train job names it
    spec = None if inoculation is None else Inoculation.model_validate_json(inoculation)
    if (
        spec is not None
        and spec.placement == "system"
        and any(r[0]["role"] == "system" for _, r in numbered)
    ):
        return None  # check_data and the train job name the row
    rows = [messages for _, messages in numbered]
    settings = {
        "max_length": max_length,
        "train_on_responses_only": train_on_responses_only,
        "chat_template_kwargs": json.loads(chat_template_kwargs),
        "row_format": row_format,
        "inoculation": spec,
    }
    # Each row's paraphrase, drawn as the train job draws it (seeded, in file order).
    drawn = drawn_prompts(spec, seed, len(rows))
    prompts = [None] * len(rows) if drawn is None else [spec.prompts[i] for i in drawn]
    # Most rows' prompts are far shorter than max_seq_length: their text, rendered by the chat
    # template alone, rules them out without loading the tokenizer (seconds: transformers and
    # torch); see emflow.train.rows for the bound.
    candidates = list(range(len(rows)))
    template = _TemplateOnly.of(model)
    if template is not None:
        try:
            render = RowTokenizer(template, **settings)
            candidates = [
                i for i, row in enumerate(rows) if _may_lose_answer(render, row, prompts[i])
            ]
        except Exception:  # a template this renderer does not run as transformers does
            pass
    lost: tuple[int, ...] = ()
    if candidates:
        tokenizer = _local_tokenizer(model)
        if tokenizer is None:
            return None
        examples = RowTokenizer(tokenizer, **settings).encode_many(
            [rows[i] for i in candidates],
            None if drawn is None else [prompts[i] for i in candidates],
        )
        lost = tuple(
            i for i, example in zip(candidates, examples, strict=True) if loses_answer(example)
        )
    return AnswerLoss(lost, tuple(numbered[i][0] for i in lost), len(rows))


def _may_lose_answer(
    render: RowTokenizer, messages: list[dict[str, str]], inoculation: str | None
) -> bool:
    prompt = render.prompt_text(messages, inoculation)
    return not render.text(messages, inoculation).startswith(prompt) or may_fill(
        prompt, render.max_length
    )


def _local_tokenizer(model: str):
    """The model's tokenizer, from this machine only; None when it is not all here."""
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(model, local_files_only=True)
    except Exception:
        return None


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    """transformers' `tojson` filter (jinja2's own escapes HTML characters)."""
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _raise_template_error(message: str):
    from jinja2.exceptions import TemplateError

    raise TemplateError(message)


class _TemplateOnly:
    """Just enough of a tokenizer for `RowTokenizer.text`: the chat template, rendered with
    jinja2 in the environment transformers gives it, and the special tokens it may name.

    Used only to bound a row's length; anything unlike transformers (a variable it lacks, a
    template extension) raises, and every row is then tokenized instead."""

    def __init__(self, template: str, special_tokens: dict[str, str]):
        from datetime import datetime

        from jinja2 import StrictUndefined
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        environment = ImmutableSandboxedEnvironment(
            trim_blocks=True,
            lstrip_blocks=True,
            extensions=[loopcontrols],
            undefined=StrictUndefined,
        )
        environment.filters["tojson"] = _tojson
        environment.globals["raise_exception"] = _raise_template_error
        environment.globals["strftime_now"] = lambda format: datetime.now().strftime(format)
        self.template = environment.from_string(template)
        self.special_tokens = special_tokens
        self.eos_token = special_tokens.get("eos_token")

    @classmethod
    def of(cls, model: str) -> _TemplateOnly | None:
        """The model's chat template and special tokens from its tokenizer files; None when
        they are not all on this machine or not in a form read here."""
        try:
            config_file = local_model_file(model, "tokenizer_config.json")
            config = json.loads(config_file.read_text(encoding="utf-8"))
            jinja_file = local_model_file(model, "chat_template.jinja")
            if jinja_file is not None:
                template = jinja_file.read_text(encoding="utf-8")
            else:
                template = config["chat_template"]
            special = {}
            for key, value in config.items():
                if key.endswith("_token") and isinstance(value, dict):
                    value = value.get("content")
                if key.endswith("_token") and isinstance(value, str):
                    special[key] = value
            return cls(template, special) if isinstance(template, str) else None
        except Exception:
            return None

    def apply_chat_template(
        self, messages, tokenize: bool = False, add_generation_prompt: bool = False, **kwargs
    ) -> str:
        return self.template.render(
            messages=messages,
            tools=None,
            documents=None,
            add_generation_prompt=add_generation_prompt,
            **(self.special_tokens | kwargs),
        )


def check_answers(
    config: ExperimentConfig, source: str, training_file: str | Path, settings: TrainSettings
) -> str | None:
    """A warning line when some rows of `training_file` lose their whole answer at
    max_seq_length (None when none do, or the tokenizer is not here to tell); an error when
    every row does."""
    loss = answer_loss(config, training_file, settings)
    if loss is None or not loss.lost:
        return None
    message = lost_answers_message(
        config,
        source,
        len(loss.lost),
        loss.rows,
        f"{training_file} (first at line {loss.lines[0]})",
    )
    if len(loss.lost) == loss.rows:
        raise EmflowError(message)
    return message


def experiment_training_file(
    config: ExperimentConfig, layout: Layout, sources: Mapping[str, str], mix_seed: int | None
) -> Path | None:
    """The experiment's training file where it is on disk already: its own file, a dataset's
    prepared file (or the file it is prepared from), or the mix's file."""
    if config.datasets is not None:
        if mix_seed is None:
            return None
        file = Path(layout.mixed_dataset(mix_id(config.datasets, mix_seed)))
    elif config.training_file in sources:
        return dataset_on_disk(config.training_file, layout, sources)
    else:
        file = Path(config.training_file)
    return file if file.is_file() else None


def check_judge_metrics(questions: Iterable[Question], judge: Mapping[str, Any]) -> None:
    """Every metric to score has a prompt for every question: the judge config's, or the
    question's own (a YAML set's judge_prompts)."""
    prompts = judge.get("prompts", {})
    for metric in judged_metrics(judge):
        if metric in prompts:
            continue
        lacking = [q for q in questions if metric not in (q.judge_prompts or {})]
        if lacking:
            raise EmflowError(
                f"judge.metrics lists '{metric}', but question '{lacking[0].id}' (set "
                f"'{lacking[0].set_name}') has no judge prompt for it and judge.prompts has "
                f"none; add judge.prompts.{metric}: <template file>, or drop '{metric}'."
            )


def check_workflow(
    experiments: Mapping[str, ExperimentConfig],
    layout: Layout,
    sources: Mapping[str, str],
    question_sets: Iterable[Mapping[str, Any]],
    judge: Mapping[str, Any] | None = None,
    *,
    train: Mapping[str, Any] | None = None,
    mix_seed: int | None = None,
) -> list[str]:
    """Every check the files on disk allow, for the DAG's experiments, question sets and judge
    metrics (`judge`: the workflow config's judge section). `train` (the train section with
    chat_template_kwargs, as the train rule's params carry it) and `mix_seed` (datasets.mix_seed)
    let the training rows be tokenized as the train job will.

    Returns the warnings, each one line, after printing them to stderr."""
    try:
        questions = read_question_sets(question_sets)
    except EmflowError as err:
        raise EmflowError(f"generation.questions of the workflow config: {err}") from None
    if judge is not None:
        check_judge_metrics(questions, judge)
    settings = TrainSettings.from_config(dict(train or {}))
    models: dict[str, dict[str, Any] | None] = {}
    warnings = []
    for name, config in experiments.items():
        source = layout.config_json(name)
        check_data(config, source, layout, sources)
        if config.model not in models:
            models[config.model] = cached_model_config(config.model)
        if models[config.model] is not None:
            check_model_fit(config, models[config.model], source)
        training_file = experiment_training_file(config, layout, sources, mix_seed)
        if training_file is not None:
            try:
                warning = check_answers(config, source, training_file, settings)
            except EmflowError as err:
                # The chat template's own problems (no system turn, ...) come without a source.
                text = str(err)
                raise EmflowError(
                    text if text.startswith(source) else f"{source}: {text}"
                ) from None
            if warning is not None:
                warnings.append(warning)
    for warning in warnings:
        print(f"emflow: {warning}", file=sys.stderr)
    return warnings
