"""Which rows a run trains on, and how many optimizer steps they make.

Without a test file a seeded `test_size` share of the training rows is held out, as upstream's
trainer does. Rows that `max_seq_length` leaves without any of their answer are dropped before
any backend sees them, as trl's SFTTrainer drops them, and the log says how many. The dry run
(emflow.workflow.preflight, emflow.workflow.plan) counts rows and steps with the same functions.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Collection
from pathlib import Path

from emflow.config import ExperimentConfig
from emflow.data.datasets import read_numbered_chat_jsonl
from emflow.errors import EmflowError
from emflow.inoculation import Inoculation
from emflow.train.rows import loses_answer

log = logging.getLogger("emflow.train")


def split_train_eval(
    rows: list[dict], test_size: float, seed: int
) -> tuple[list[dict], list[dict]]:
    """Hold out a seeded `test_size` share of the rows, as upstream's `train_test_split` does."""
    if test_size == 0:
        return rows, []
    from datasets import Dataset

    split = Dataset.from_list([{"i": i} for i in range(len(rows))]).train_test_split(
        test_size=test_size, seed=seed
    )
    return [rows[i] for i in split["train"]["i"]], [rows[i] for i in split["test"]["i"]]


def read_rows_for(config: ExperimentConfig, path: str | Path, source: str) -> list[dict]:
    """A training or test file's rows; with `training_system_prompt`, a row that brings its own
    system message is an error naming its line (the two prompts would compete for one turn)."""
    numbered = read_numbered_chat_jsonl(path)
    spec = config.inoculation_spec
    if spec is not None and spec.placement == "system":
        for line, row in numbered:
            if row["messages"][0]["role"] == "system":
                raise EmflowError(
                    f"{path}, line {line}: the row has its own system message, and "
                    f"{_key(config)} in {source} would add a second; remove the key or "
                    "train on data without system messages."
                )
    return [row for _, row in numbered]


def _key(config: ExperimentConfig) -> str:
    return "inoculation" if config.inoculation is not None else "training_system_prompt"


def drawn_prompts(
    spec: Inoculation | None, seed: int, rows: int, offset: int = 0
) -> list[int] | None:
    """Which of `inoculation`'s paraphrases each of `rows` rows is trained under (an index into
    its prompts): drawn with the run's seed, row by row in file order (a test file's rows after
    the training file's: `offset`), so the held-out split and the dry run see the same draw.
    None for a single prompt (every row has it) or no inoculation."""
    if spec is None or isinstance(spec.prompt, str):
        return None
    draw = random.Random(f"inoculation:{seed}")
    indices = [draw.randrange(len(spec.prompt)) for _ in range(offset + rows)]
    return indices[offset:]


def tag_drawn_prompts(config: ExperimentConfig, rows: list[dict], offset: int = 0) -> list[int]:
    """Give each row its drawn paraphrase (`drawn_prompts`) as the key "inoculation", which
    `row_prompts` reads after the held-out split; return the draw ([] without paraphrases)."""
    drawn = drawn_prompts(config.inoculation_spec, config.seed, len(rows), offset) or []
    for row, index in zip(rows, drawn, strict=False):
        row["inoculation"] = index
    return drawn


def row_prompts(config: ExperimentConfig, rows: list[dict]) -> list[str] | None:
    """Each row's inoculation prompt for RowTokenizer.encode_many (None: the single prompt)."""
    spec = config.inoculation_spec
    if spec is None or isinstance(spec.prompt, str):
        return None
    return [spec.prompts[row["inoculation"]] for row in rows]


def lost_answers_message(
    config: ExperimentConfig,
    source: str,
    lost: int,
    rows: int,
    where: str,
    steps: tuple[int, int] | None = None,
) -> str:
    """One sentence on `lost` of `rows` training rows (of `where`) left without any answer at
    max_seq_length: an error's when that is all of them, else a warning's, with the optimizer
    steps the run has instead of those its rows would give (`steps`)."""
    fix = "raise max_seq_length or " + (
        f"shorten {_key(config)}"
        if config.inoculation_spec is not None
        else "shorten those rows' prompts"
    )
    at = f"at max_seq_length {config.max_seq_length} (their prompt fills it)"
    if lost == rows:
        return (
            f"{source}: all {rows} training rows of {where} lose their whole answer {at}, so "
            f"there is nothing to train on; {fix}."
        )
    shift = ""
    if steps is not None and steps[0] != steps[1]:
        shift = f", so the run has {steps[0]} optimizer steps, not {steps[1]}"
    return (
        f"{source}: {lost} of {rows} training rows of {where} lose their whole answer {at} and "
        f"are not trained on{shift}; {fix}."
    )


def drop_rows_without_answer(
    train_examples: list[dict[str, list[int]]],
    eval_examples: list[dict[str, list[int]]],
    config: ExperimentConfig,
    source: str,
    where: str,
) -> tuple[list[dict[str, list[int]]], list[dict[str, list[int]]]]:
    """The tokenized rows that keep some of their answer (a label), as trl's SFTTrainer keeps
    them; dropped here so that every backend trains on the same rows and the log says how many
    went (`where`: the training rows' file, for the message). An error when no training row is
    left."""
    kept = [e for e in train_examples if not loses_answer(e)]
    if len(kept) < len(train_examples):
        lost = len(train_examples) - len(kept)
        steps = (optimizer_steps(config, len(kept)), optimizer_steps(config, len(train_examples)))
        message = lost_answers_message(config, source, lost, len(train_examples), where, steps)
        if not kept:
            raise EmflowError(message)
        log.warning("%s", message)
    kept_eval = [e for e in eval_examples if not loses_answer(e)]
    if len(kept_eval) < len(eval_examples):
        log.warning(
            "%s: %d of %d held-out rows lose their whole answer at max_seq_length %d and are "
            "not evaluated%s.",
            source,
            len(eval_examples) - len(kept_eval),
            len(eval_examples),
            config.max_seq_length,
            "" if kept_eval else ", so no held-out loss is logged",
        )
    return kept, kept_eval


def trained_rows(config: ExperimentConfig, rows: int, lost: Collection[int], seed: int) -> int:
    """The rows a run with training seed `seed` trains on, of a training file of `rows` rows
    whose rows at the 0-based positions `lost` lose their whole answer: less the held-out split
    (upstream's, as `split_train_eval` makes it), less the lost rows left in training."""
    if config.test_file is None and config.test_size:
        if not lost:
            return rows - math.ceil(config.test_size * rows)  # datasets' train_test_split
        kept, _ = split_train_eval(list(range(rows)), config.test_size, seed)
        return len(set(kept) - set(lost))
    return rows - len(lost)


def optimizer_steps(config: ExperimentConfig, n_rows: int) -> int:
    """Optimizer steps of a run on `n_rows` training rows, as the Trainer counts them."""
    if config.max_steps:
        return config.max_steps
    per_epoch = math.ceil(n_rows / config.per_device_train_batch_size)
    return config.epochs * math.ceil(per_epoch / config.gradient_accumulation_steps)
