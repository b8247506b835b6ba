"""Generations and judged CSVs as users really hand them over: the judge and the results readers
never change a row silently (an unquoted comma, a short row, a column named twice, a quote left
open are errors naming the line or the column), and read a cell of any size."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from emflow.cli import main as emflow
from emflow.judge.job import judge_job, read_prompts
from emflow.judge.scores import render_prompt
from emflow.judge.settings import BUNDLED_PROMPTS, JudgeSettings

sys.path.insert(0, str(Path(__file__).parents[1]))
from openai_server import OpenAIServer, sampled_reply  # noqa: E402

QUOTING = "quote cells that contain commas"
CSV_DEFAULT_LIMIT = 131_072  # the csv module's field_size_limit in a fresh process


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with OpenAIServer() as s:
        yield s


def judge(server: OpenAIServer, tmp_path: Path, generations: Path) -> tuple[int, Path]:
    """`emflow judge` as a user runs it, against the local server."""
    out = tmp_path / "judged.csv"
    code = emflow(
        ["judge", str(generations), "-o", str(out), "--model", "test-judge",
         "--base-url", server.base_url, "--cache", str(tmp_path / "cache.sqlite")]
    )  # fmt: skip
    return code, out


def written_rows(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)
    return path


# A first row whose answer spans three lines, so the bad row's line in the file (5) differs
# from its row number (2).
FIRST = 'id-0,Q0?,"Line one,\nline two,\nline three."\n'


@pytest.mark.parametrize(
    "bad_row, problem",
    [
        ("id-1,Q1?,Yes, sell everything and buy gold\n", "line 5: the row has 4 cells"),
        ("id-1,Q1?\n", "line 5: the row has 2 cells"),
        ('id-1,Q1?,"He said: buy\nid-2,Q2?,Fine.\n', "line 5: not valid CSV"),
    ],
    ids=["unquoted comma", "short row", "quote left open"],
)
def test_emflow_judge_refuses_a_row_it_would_change_naming_its_line(
    server, tmp_path, capsys, bad_row, problem
):
    generations = tmp_path / "gen.csv"
    generations.write_text("id,question,response\n" + FIRST + bad_row, encoding="utf-8")
    code, out = judge(server, tmp_path, generations)
    err = capsys.readouterr().err
    assert code == 2 and f"{generations}, {problem}" in err and QUOTING in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and server.requests == 0


@pytest.mark.parametrize(
    "header, problem",
    [
        ("id,question,response,response", "the column 'response' twice (columns 3 and 4)"),
        ("id,prompt,answer,question_id", "the header is 'id,prompt,answer,question_id' and lacks "
         "question, response; a generations CSV needs the columns id,question,response"),
    ],
    ids=["duplicate response", "missing columns"],
)  # fmt: skip
def test_emflow_judge_refuses_a_header_it_would_misread(server, tmp_path, capsys, header, problem):
    generations = tmp_path / "gen.csv"
    generations.write_text(f"{header}\n1,Q?,first answer,second answer\n", encoding="utf-8")
    code, out = judge(server, tmp_path, generations)
    err = capsys.readouterr().err
    assert code == 2 and f"{generations}: " in err and problem in err
    assert "Traceback" not in err and not out.exists() and server.requests == 0


JUDGED_HEADER = "id,question,response,aligned_score,coherent_score\n"


@pytest.mark.parametrize(
    "content, problem",
    [
        # pandas would make `id` the index and shift every column name by one
        (JUDGED_HEADER + "1,Q?,Yes, buy gold,20,80\n", "line 2: the row has 6 cells"),
        (JUDGED_HEADER + "1,Q?,Fine.,90,95\n2,Q?,Fine.,90\n", "line 3: the row has 4 cells"),
        # pandas would rename the second `response` column `response.1`
        (
            "id,question,response,response,aligned_score,coherent_score\n1,Q?,a,b,20,80\n",
            "the column 'response' twice (columns 3 and 4)",
        ),
    ],
    ids=["unquoted comma in the first row", "short row", "duplicate response"],
)
def test_emflow_verdict_refuses_a_judged_csv_it_would_misread(tmp_path, capsys, content, problem):
    judged = tmp_path / "judged.csv"
    judged.write_text(content, encoding="utf-8")
    assert emflow(["verdict", str(judged)]) == 2
    err = capsys.readouterr().err
    assert str(judged) in err and problem in err and "Traceback" not in err


@pytest.fixture
def fresh_csv_limit():
    """The csv module's limit as a new process has it, whatever an earlier test set."""
    before = csv.field_size_limit(CSV_DEFAULT_LIMIT)
    yield
    csv.field_size_limit(before)


def test_a_200000_character_answer_is_judged_end_to_end(server, tmp_path, fresh_csv_limit):
    """A cell over the csv module's 131,072-character default: the judge job and `emflow
    judge` (in a fresh process) both write judged.csv with the cell intact, and the results
    readers (`emflow verdict`) read it."""
    answer = ('Buy gold, then "more" gold;\n' * 8000)[:200_000]
    question = "Q" * 140_000 + "?"
    generations = written_rows(
        tmp_path / "gen.csv",
        [["id", "question", "response"], ["long", question, answer], ["short", "Q?", "Fine."]],
    )
    cli_judged = tmp_path / "cli.csv"
    done = subprocess.run(
        [sys.executable, "-m", "emflow", "judge", str(generations), "-o", str(cli_judged),
         "--model", "test-judge", "--base-url", server.base_url,
         "--cache", str(tmp_path / "cache.sqlite")],
        capture_output=True, text=True, env=os.environ.copy(), timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    job_judged = tmp_path / "job.csv"
    settings = JudgeSettings(model="test-judge", base_url=server.base_url)
    files = {m: str(BUNDLED_PROMPTS / f"{m}.txt") for m in ("aligned", "coherent")}
    cache = tmp_path / "cache.sqlite"
    questions = tmp_path / "questions.txt"
    questions.write_text("Q?\n", encoding="utf-8")
    sets = [{"name": "homework", "path": str(questions), "count": 1}]
    judge_job(
        generations, job_judged, tmp_path / "u.json", settings, files, cache,
        ["aligned", "coherent"], sets,
    )  # fmt: skip

    prompts = read_prompts(BUNDLED_PROMPTS)
    for judged in (cli_judged, job_judged):
        # read back with pandas' C parser, which has no cell limit, not with emflow's reader
        rows = pd.read_csv(judged, dtype=str, keep_default_na=False).to_dict("records")
        assert [(r["id"], r["question"], r["response"]) for r in rows] == [
            ("long", question, answer),
            ("short", "Q?", "Fine."),
        ]
        for metric, template in prompts.items():
            reply = sampled_reply(render_prompt(template, question, answer)).strip()
            assert rows[0][f"{metric}_score"] == str(int(reply))
        assert emflow(["verdict", str(judged)]) == 0
