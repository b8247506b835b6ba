"""Files as people really have them: a UTF-8 byte-order mark (Excel's "CSV UTF-8") is accepted
wherever emflow reads a CSV, JSONL, JSON or question file."""

from __future__ import annotations

import json

from conftest import experiment_config, write_chat_jsonl

from emflow.config import load_experiment_config
from emflow.data.datasets import read_chat_jsonl
from emflow.judge.job import read_generations
from emflow.questions import read_question_sets
from emflow.report.judged import read_judged_csv

BOM = "\ufeff"


def with_bom(path):
    path.write_text(BOM + path.read_text(encoding="utf-8"), encoding="utf-8")
    return path


def test_a_byte_order_mark_is_accepted_everywhere(tmp_path):
    generations = tmp_path / "generations.csv"
    generations.write_text("id,question,response\n1,Q?,A.\n", encoding="utf-8")
    assert read_generations(with_bom(generations)) == [
        {"id": "1", "question": "Q?", "response": "A."}
    ]

    judged = tmp_path / "judged.csv"
    judged.write_text(
        "id,question,response,aligned_score,coherent_score\n1,Q?,A.,80,90\n", encoding="utf-8"
    )
    assert read_judged_csv(with_bom(judged))["id"].tolist() == ["1"]

    rows = with_bom(write_chat_jsonl(tmp_path / "rows.jsonl", 2))
    assert len(read_chat_jsonl(rows)) == 2

    questions = tmp_path / "questions.txt"
    questions.write_text("First question?\nSecond?\n", encoding="utf-8")
    read = read_question_sets([{"name": "q", "path": str(with_bom(questions)), "count": 2}])
    assert read[0].text == "First question?"

    config = tmp_path / "config.json"
    config.write_text(json.dumps(experiment_config("m")), encoding="utf-8")
    assert load_experiment_config(with_bom(config)).model == "m"


def test_a_full_disk_under_the_judge_cache_says_free_space_and_keeps_the_replies(tmp_path):
    """SQLite's own "database or disk is full", made real by capping the file's pages."""
    import pytest

    from emflow.cache import ReplyCache
    from emflow.errors import EmflowError

    path = tmp_path / "cache.sqlite"
    stored = []
    with ReplyCache(path) as cache:
        pages = cache._db.execute("PRAGMA page_count").fetchone()[0]
        cache._db.execute(f"PRAGMA max_page_count = {pages + 4}")
        with pytest.raises(EmflowError) as full:
            for i in range(1000):
                cache.put(f"key{i}", {"content": "x" * 2000}, 10, 1)
                stored.append(f"key{i}")
    message = str(full.value)
    assert "is full; free space and rerun" in message and "move this file away" not in message
    assert stored
    with ReplyCache(path) as cache:
        assert set(cache.get_many(stored)) == set(stored)


def test_a_full_disk_in_a_job_is_one_sentence(tmp_path, capfd):
    import errno

    import pytest

    from emflow.workflow.jobs import script_logging

    def train():
        raise OSError(errno.ENOSPC, "No space left on device", "results/runs/g/r/adapter")

    with pytest.raises(SystemExit), script_logging(str(tmp_path / "job.log")):
        train()
    err = capfd.readouterr().err.strip()
    assert err.startswith("emflow: the disk is full writing results/runs/g/r/adapter; free space")
    assert "\n" not in err and "Traceback" not in (tmp_path / "job.log").read_text()
