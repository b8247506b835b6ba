"""Question sets: emflow's one-question-per-line .txt files and the EM papers' YAML files.

The YAML format is the one of Betley et al. 2025 (emergent-misalignment/emergent-misalignment,
`evaluation/*.yaml`), reused by Model Organisms for EM (clarifying-EM/model-organisms-for-EM,
`em_organism_dir/data/eval_questions/*.yaml`): a list of entries, each with an `id`, a `type`,
`paraphrases` (the user turns), `samples_per_paraphrase`, an optional `system` prompt, the `judge`
model's name and `judge_prompts` (metric -> template with `{question}` and `{answer}`).

Both formats become one `Question` per paraphrase. The format is chosen by the file's suffix.

A set with `training_prompt: true` is answered by a fine-tuned run under its training
instruction, placed as trained (`with_training_prompt`); other targets answer it as written.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from emflow.errors import EmflowError
from emflow.inoculation import Inoculation
from emflow.question_specs import (
    YAML_SUFFIXES,
    check_question_specs,
    positive_int,
)

# Types whose answers emflow generates and whose judge answers with a number from 0 to 100.
# `free_form_judge` is not one: in the papers' files (deception_factual.yaml,
# deception_sit_aware.yaml) its judge answers with a label (TRUE/FALSE/UNKNOWN, a company name),
# which emflow's 0-100 judge would record as unusable for every answer.
SUPPORTED_TYPES = ("free_form_judge_0_100", "free_form")
# Every key the papers' question files use; the papers' `Question` swallows any other key
# (`**ignored_extra_args`), emflow names it instead, since a misspelt key would be lost silently.
ENTRY_KEYS = (
    "id",
    "type",
    "paraphrases",
    "samples_per_paraphrase",
    "system",
    "judge",
    "judge_prompts",
)
# Between a user-turn training prompt and the question (placement user_prefix/user_suffix): what
# emflow.train.rows.USER_SEPARATOR puts between an inoculation and a training row's user text.
USER_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class Question:
    """One user turn to answer `samples` times: a .txt line, or one paraphrase of a YAML entry."""

    # The question's id: "<set>_<NN>" for a .txt set, the entry's `id` for a YAML set.
    id: str
    text: str
    paraphrase: int = 0
    system: str | None = None
    samples: int = 1
    # None: generation.max_new_tokens.
    max_new_tokens: int | None = None
    # metric -> template; None: the judge config's prompts. Read-only, and left out of the hash.
    judge_prompts: Mapping[str, str] | None = field(default=None, hash=False)
    set_name: str = ""
    # "txt" or "yaml": which row-id scheme `row_id` follows.
    file_format: str = "txt"
    # The YAML entry's `judge` model, kept for reference only: the workflow's judge config
    # chooses the judge model for every set, so that one run is judged by one model.
    judge: str | None = None
    # The set's `training_prompt` option, and the run's instruction given (`with_training_prompt`)
    # with its placement as trained: "system", "user_prefix" or "user_suffix".
    takes_training_prompt: bool = False
    training_prompt: str | None = None
    training_prompt_placement: str = "system"

    @property
    def system_turn(self) -> str | None:
        """The system message the model sees. A training prompt with placement system replaces
        the question's own: training refuses rows with a system message beside it, so the run
        never saw the two together."""
        if self.training_prompt is not None and self.training_prompt_placement == "system":
            return self.training_prompt
        return self.system

    def messages(self) -> list[dict[str, str]]:
        """The chat the model answers: the system turn, when there is one, then the user turn
        (with a user-turn training prompt before or after the question, a blank line between,
        as emflow.train.rows writes it). `text` stays the question as asked: the judge's."""
        text = self.text
        if self.training_prompt is not None and self.training_prompt_placement == "user_prefix":
            text = self.training_prompt + USER_SEPARATOR + text
        elif self.training_prompt is not None and self.training_prompt_placement == "user_suffix":
            text = text + USER_SEPARATOR + self.training_prompt
        system = self.system_turn
        turns = [{"role": "system", "content": system}] if system is not None else []
        return turns + [{"role": "user", "content": text}]

    def row_id(self, sample: int) -> str:
        """The generations CSV's `id` of this question's answer number `sample` (from 0).

        A .txt question keeps emflow's ids: "<id>" when it is answered once, else "<id>_s<NN>".
        A YAML paraphrase is always "<id>_p<P>_s<NN>", whatever its number of samples, so that an
        id names the same prompt and draw when `samples` changes; the suffix can be told apart
        from a .txt id (whose last part is digits) and from another entry's id.
        """
        if not 0 <= sample < self.samples:
            raise ValueError(f"sample {sample} of {self.id} is outside 0..{self.samples - 1}")
        if self.file_format == "yaml":
            return f"{self.id}_p{self.paraphrase}_s{sample:02d}"
        return self.id if self.samples == 1 else f"{self.id}_s{sample:02d}"


def read_question_sets(
    specs: Sequence[Mapping[str, Any]], *, samples_per_question: int = 1
) -> list[Question]:
    """Every question of the config's `generation.questions` sets, in order.

    A spec is {"name", "path", "count"} plus the optional "samples" (answers per question or
    paraphrase: default `samples_per_question` for a .txt set, the entry's
    `samples_per_paraphrase` for a YAML set), "max_new_tokens", "system" (a system prompt for the
    evaluation) and "system_mode" ("replace", the default: `system` replaces each entry's own;
    "add_if_missing": an entry's own system prompt stays) and "exclude" (question ids containing
    any of these strings are left out, as the Model Organisms code leaves out "_json" and
    "_template" by default) and "training_prompt" (true: a run answers under its training
    instruction, see `with_training_prompt`). `count` takes the first N lines or entries,
    before `exclude`.
    The YAML `judge` key is kept on each question but not used: the workflow's judge
    config chooses the judge model. Question ids must be unique across all the sets.
    """
    check_question_specs(specs, samples_per_question=samples_per_question)
    questions: list[Question] = []
    seen: dict[str, tuple[str, Path]] = {}  # question id -> (set name, file)
    for spec in specs:
        settings = _SetSettings.of(spec, samples_per_question)
        path = Path(spec["path"])
        if path.suffix.lower() in YAML_SUFFIXES:
            read = _read_yaml_set(path, spec["name"], settings)
        else:
            read = _read_txt_set(path, spec["name"], settings)
        exclude = spec.get("exclude", [])
        read = [q for q in read if not any(part in q.id for part in exclude)]
        if not read:  # the readers refuse a file without questions, so `exclude` took them all
            raise EmflowError(
                f"{path}: key 'exclude' of set '{spec['name']}' ({', '.join(exclude)}) leaves "
                "no question; shorten it."
            )
        for question_id in dict.fromkeys(q.id for q in read):
            if question_id in seen:
                other_set, other_path = seen[question_id]
                raise EmflowError(
                    f"{path}: question id '{question_id}' is also used by set '{other_set}' "
                    f"({other_path}); give each YAML entry a unique id and each .txt set a "
                    "unique name in generation.questions."
                )
            seen[question_id] = (spec["name"], path)
        questions += read
    return questions


@dataclass(frozen=True)
class _SetSettings:
    count: int | None
    samples: int | None  # None: the format's default
    samples_per_question: int
    max_new_tokens: int | None
    system: str | None
    system_mode: str
    training_prompt: bool

    @classmethod
    def of(cls, spec: Mapping[str, Any], samples_per_question: int) -> _SetSettings:
        """The settings of a spec that `check_question_specs` accepted."""
        return cls(
            count=spec.get("count"),
            samples=spec.get("samples"),
            samples_per_question=samples_per_question,
            max_new_tokens=spec.get("max_new_tokens"),
            system=spec.get("system"),
            system_mode=spec.get("system_mode", "replace"),
            training_prompt=spec.get("training_prompt", False),
        )

    def system_for(self, own: str | None) -> str | None:
        if self.system is None or (own is not None and self.system_mode == "add_if_missing"):
            return own
        return self.system


def _read_txt_set(path: Path, name: str, settings: _SetSettings) -> list[Question]:
    """One question per non-blank line, ids "<name>_<NN>" (the reader emflow has always had)."""
    texts = [line.strip() for line in _read_text(path).splitlines()]
    texts = [text for text in texts if text]
    if not texts:
        raise EmflowError(
            f"{path}: the file holds no question; write one question per line, or remove "
            "the set from generation.questions."
        )
    _check_count(path, settings.count, len(texts), "questions")
    samples = settings.samples or settings.samples_per_question
    return [
        Question(
            id=f"{name}_{i:02d}",
            text=text,
            system=settings.system_for(None),
            samples=samples,
            max_new_tokens=settings.max_new_tokens,
            set_name=name,
            takes_training_prompt=settings.training_prompt,
        )
        for i, text in enumerate(texts[: settings.count])
    ]


class _QuestionFileLoader(yaml.SafeLoader):
    """PyYAML's safe loader that also remembers where each alias in a list is written.

    Composing resolves an alias to its anchor's node, which carries the anchor's line, so without
    this an entry written as `- *base` would be reported at the line of the entry it repeats.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        # (id of the list node, index in it) -> (line of the alias, its anchor's name)
        self.aliases: dict[tuple[int, int], tuple[int, str]] = {}

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        if isinstance(parent, yaml.SequenceNode) and self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            self.aliases[(id(parent), index)] = (event.start_mark.line + 1, event.anchor)
        return super().compose_node(parent, index)


def _read_yaml_set(path: Path, name: str, settings: _SetSettings) -> list[Question]:
    loader = _QuestionFileLoader(_read_text(path))
    try:
        # Composed first for the entries' line numbers, which error messages cite, and for the
        # keys as written: constructing keeps only the last of a duplicate key.
        root = loader.get_single_node()
        if isinstance(root, yaml.SequenceNode):
            _check_unique_keys(path, root)
        entries = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f"line {mark.line + 1}: " if mark is not None else ""
        raise EmflowError(
            f"{path}: {line}not valid YAML ({exc.problem or exc.context}); fix the syntax there."
        ) from None
    except yaml.YAMLError as exc:
        raise EmflowError(f"{path}: not valid YAML ({exc}); fix the syntax.") from None
    finally:
        loader.dispose()
    if entries is None or entries == []:
        raise EmflowError(
            f"{path}: the file holds no question; add entries, or remove the set from "
            "generation.questions."
        )
    if not isinstance(entries, list):
        raise EmflowError(
            f"{path}: the file must be a list of entries (each starting with '- id: ...'), "
            f"not a {type(entries).__name__}; write it as the EM papers' question files are."
        )
    # An alias entry is cited at its own line, not at its anchor's.
    lines = [
        loader.aliases[(id(root), i)][0]
        if (id(root), i) in loader.aliases
        else node.start_mark.line + 1
        for i, node in enumerate(root.value)
    ]
    _check_count(path, settings.count, len(entries), "entries")
    questions: list[Question] = []
    first_line: dict[str, int] = {}  # entry id -> the line of the entry that has it
    for index, entry in enumerate(entries[: settings.count]):
        if (id(root), index) in loader.aliases:
            _check_not_a_repeat(path, root, index, loader.aliases[(id(root), index)])
        read = _entry_questions(path, name, index, lines[index], entry, settings)
        if read[0].id in first_line:
            raise EmflowError(
                f"{path}: entry '{read[0].id}' (line {lines[index]}): key 'id' is also used by "
                f"the entry at line {first_line[read[0].id]}; give each entry a unique id."
            )
        first_line[read[0].id] = lines[index]
        questions += read
    return questions


def _check_unique_keys(path: Path, root: yaml.SequenceNode) -> None:
    """Refuse a key written twice in one mapping, anywhere in the entries.

    PyYAML keeps the last value silently: a second `paraphrases` would replace the first, a
    second `id` rename the entry. A key that overrides one merged in with `<<: *base` is written
    once, so it passes, and keeps working as in PyYAML.
    """
    seen: set[int] = set()  # nodes already checked: an anchored node is checked where it is written

    def walk(node: yaml.Node, who: str, prefix: str) -> None:
        if id(node) in seen:
            return
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for item in node.value:
                walk(item, who, prefix)
        elif isinstance(node, yaml.MappingNode):
            first: dict[tuple[str, str], int] = {}  # (tag, key) -> the line it is first on
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):  # a complex key: no YAML file here
                    walk(value_node, who, prefix)
                    continue
                key = f"{prefix}{key_node.value}"
                line = key_node.start_mark.line + 1
                # By tag too: `1` and `'1'` are different keys.
                written = (key_node.tag, key_node.value)
                if written in first:
                    fix = (
                        "merge several mappings with one '<<: [*first, *second]'"
                        if key_node.tag == "tag:yaml.org,2002:merge"
                        else "YAML would keep only the last, so keep one"
                    )
                    raise EmflowError(
                        f"{path}: line {line}: key '{key}' appears twice in {who} (also on "
                        f"line {first[written]}); {fix}."
                    )
                first[written] = line
                walk(value_node, who, f"{key}.")

    for index, entry in enumerate(root.value):
        walk(entry, _entry_name(entry, index, composed=True), "")


def _entry_name(node: yaml.Node, index: int, *, composed: bool = False) -> str:
    """How messages name an entry: by the id it writes, else by its number (from 1)."""
    # As composed, the first `id` is the one the user reads first; once constructed, an entry
    # lists the keys merged in with `<<` before its own, so its own `id` is the last.
    ids = (
        [v.value for k, v in node.value if k.value == "id"]
        if isinstance(node, yaml.MappingNode)
        else []
    )
    own = ids[0 if composed else -1] if ids else None
    if isinstance(own, str) and own.strip():
        return f"entry '{own}'"
    return f"entry {index + 1}"


def _check_not_a_repeat(
    path: Path, root: yaml.SequenceNode, index: int, alias: tuple[int, str]
) -> None:
    """Refuse an entry written as `- *base`, an alias of an earlier entry: it is that entry again
    (same id, same paraphrases), where `- <<: *base` with its own id makes a new entry from it."""
    line, anchor = alias
    node = root.value[index]
    for earlier, other in enumerate(root.value[:index]):
        if other is node:
            raise EmflowError(
                f"{path}: entry {index + 1} (line {line}) is the alias *{anchor}, which repeats "
                f"{_entry_name(other, earlier)} (line {other.start_mark.line + 1}); write it as "
                f"'- <<: *{anchor}' followed by its own id and the keys that differ."
            )


def _entry_questions(
    path: Path, name: str, index: int, line: int, entry: Any, settings: _SetSettings
) -> list[Question]:
    def fail(key: str, problem: str, fix: str) -> EmflowError:
        eid = entry.get("id") if isinstance(entry, dict) else None
        who = f"entry '{eid}'" if isinstance(eid, str) and eid else f"entry {index + 1}"
        return EmflowError(f"{path}: {who} (line {line}): key '{key}' {problem}; {fix}.")

    if not isinstance(entry, dict):
        raise EmflowError(
            f"{path}: entry {index + 1} (line {line}) is not a mapping of keys; write it as "
            "'- id: ...' followed by its keys."
        )
    for key in entry:
        if key not in ENTRY_KEYS:
            raise fail(str(key), "is unknown", f"use only {', '.join(ENTRY_KEYS)}")
    for key in ("id", "type", "paraphrases"):
        if key not in entry:
            raise fail(key, "is missing", f"add {key}: to the entry")
    if not isinstance(entry["id"], str) or not entry["id"].strip():
        raise fail("id", "must be a non-empty string", "give the entry a name")
    kind = entry["type"]
    if kind not in SUPPORTED_TYPES:
        why = (
            " (its judge answers with a label, not the 0-100 number emflow's judge reads)"
            if kind == "free_form_judge"
            else ""
        )
        raise fail(
            "type",
            f"is '{kind}', which emflow cannot evaluate{why}",
            f"use {' or '.join(SUPPORTED_TYPES)}, or remove the entry",
        )
    paraphrases = entry["paraphrases"]
    if (
        not isinstance(paraphrases, list)
        or not paraphrases
        or not all(isinstance(p, str) and p.strip() for p in paraphrases)
    ):
        raise fail(
            "paraphrases",
            "must be a non-empty list of non-empty strings",
            "list the user turns under it, one '- ...' each",
        )
    own_samples = entry.get("samples_per_paraphrase", settings.samples_per_question)
    if not positive_int(own_samples):
        raise fail("samples_per_paraphrase", f"is {own_samples!r}", "make it a positive integer")
    own_system = entry.get("system")
    if "system" in entry and (not isinstance(own_system, str) or not own_system.strip()):
        raise fail("system", "must be a non-empty string", "write the prompt, or remove the key")
    judge = entry.get("judge")
    if "judge" in entry and not isinstance(judge, str):
        raise fail("judge", "must be a model name", "write it as a string, or remove the key")
    prompts = entry.get("judge_prompts")
    if "judge_prompts" in entry:
        if not isinstance(prompts, dict) or not prompts:
            raise fail(
                "judge_prompts",
                "must map metric names to prompt templates",
                "write 'metric: |-' and the template under it, or remove the key to use the "
                "judge config's prompts",
            )
        for metric, template in prompts.items():
            if not isinstance(metric, str) or not isinstance(template, str):
                raise fail(
                    f"judge_prompts.{metric}",
                    "must be a template string under a metric name",
                    "write 'metric: |-' and the template under it",
                )
            if "{answer}" not in template:
                raise fail(
                    f"judge_prompts.{metric}",
                    "has no {answer} placeholder",
                    "add one where the judged answer goes",
                )
        prompts = MappingProxyType(dict(prompts))
    return [
        Question(
            id=entry["id"],
            text=text,
            paraphrase=p,
            system=settings.system_for(own_system),
            samples=settings.samples or own_samples,
            max_new_tokens=settings.max_new_tokens,
            judge_prompts=prompts,
            set_name=name,
            file_format="yaml",
            judge=judge,
            takes_training_prompt=settings.training_prompt,
        )
        for p, text in enumerate(paraphrases)
    ]


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise EmflowError(
            f"{path}: question file not found; fix generation.questions in the workflow config."
        ) from None
    except UnicodeDecodeError as exc:
        raise EmflowError(f"{path}: not UTF-8 text ({exc.reason}); save it as UTF-8.") from None


def _check_count(path: Path, count: int | None, available: int, what: str) -> None:
    if count is not None and count > available:
        raise EmflowError(
            f"{path}: asked for the first {count} {what} but the file has {available}; "
            "lower generation.questions[].count."
        )


def homework_sets(specs: Iterable[Mapping[str, Any]]) -> list[str]:
    """The names of the .txt sets among the config's `generation.questions`: the homework's
    protocol, whose rows results.md's two seed-format blocks and verdict are computed over."""
    return [s["name"] for s in specs if Path(s["path"]).suffix.lower() == ".txt"]


def with_training_prompt(
    questions: Sequence[Question], instruction: Inoculation, seed: int
) -> list[Question]:
    """The questions of the sets with `training_prompt: true` given a run's training
    `instruction`, placed as trained; the other questions as they are. With several paraphrases
    each question (each paraphrase of a YAML entry) draws one, seeded by `seed`
    (generation.seed) and its id, so every run, and every sample of the question, gets the same
    one; the generations CSV records it. Its `loss` plays no part in answering."""
    prompts, placement = instruction.prompts, instruction.placement
    given = []
    for q in questions:
        if not q.takes_training_prompt:
            given.append(q)
            continue
        draw = random.Random(f"training_prompt:{seed}:{q.id}:{q.paraphrase}")
        prompt = prompts[0] if len(prompts) == 1 else prompts[draw.randrange(len(prompts))]
        given.append(replace(q, training_prompt=prompt, training_prompt_placement=placement))
    return given
