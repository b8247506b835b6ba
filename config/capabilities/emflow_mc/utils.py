"""The emflow_mc task's rows, read from the JSONL file beside this one (any working directory)."""

import json
from pathlib import Path

import datasets

ROWS = Path(__file__).with_name("emflow_mc.jsonl")


def load_emflow_mc(**_metadata) -> datasets.DatasetDict:
    """The task's one split; the harness passes the task's metadata, which this task ignores."""
    with ROWS.open(encoding="utf-8") as rows:
        return datasets.DatasetDict(
            {"test": datasets.Dataset.from_list(list(map(json.loads, rows)))}
        )
