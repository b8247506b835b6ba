"""Parallel jobs that need the same replies pay for them once (issue 20, item 10).

Each test runs real `emflow judge` processes (or generate jobs) against the real local server,
whose gate holds the first job's requests in flight while the second job starts, so the two
always overlap, whatever the machine's speed.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from emflow.cache import CLAIM_LEASE

sys.path.insert(0, str(Path(__file__).parents[1]))
from openai_server import OpenAIServer  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-test-claims-0123456789-SECRET"
DEADLINE = 60.0  # seconds; only reached when something hangs


@pytest.fixture
def server():
    with OpenAIServer() as s:
        yield s
        s.gate.set()  # let held handler threads finish


class Job:
    """A process whose stderr (its log) is collected line by line as it runs."""

    def __init__(self, args: list[str]):
        env = os.environ | {"OPENAI_API_KEY": KEY, "PYTHONPATH": str(ROOT)}
        env.pop("OPENAI_BASE_URL", None)
        self.process = subprocess.Popen(
            args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stderr:
            self.lines.append(line)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def wait_for_log(self, text: str) -> None:
        until(lambda: text in self.log or self.process.poll() is not None)
        assert text in self.log, self.log

    def finish(self) -> int:
        code = self.process.wait(DEADLINE)
        self._reader.join(DEADLINE)
        return code


def until(condition) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def write_generations(path: Path, answers: list[str]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "question", "response"])
        for i, answer in enumerate(answers):
            writer.writerow([f"q{i}", f"Question {i}?", answer])
    return path


def judge(server: OpenAIServer, generations: Path, out: Path, cache: Path, *extra: str) -> Job:
    """`emflow judge` as a user runs it; its usage JSON lands next to `out`."""
    return Job([sys.executable, "-m", "emflow", "judge", str(generations), "-o", str(out),
                "--model", "test-judge", "--base-url", server.base_url, "--cache", str(cache),
                "--usage", str(out.with_suffix(".json")), "--concurrency", "16",
                *extra])  # fmt: skip


def usage(out: Path) -> dict:
    return json.loads(out.with_suffix(".json").read_text())


def start_second_while_first_sends(server, first_args, second_args, calls: int):
    """The first job's `calls` requests held in flight, the second job started and waiting."""
    server.gate.clear()
    first = judge(server, *first_args)
    until(lambda: server.held == calls or first.process.poll() is not None)
    assert server.held == calls, first.log
    second = judge(server, *second_args)
    second.wait_for_log(f"waiting for {calls} calls another job is sending")
    return first, second


def test_two_judge_jobs_asking_the_same_calls_send_each_once(server, tmp_path):
    generations = write_generations(tmp_path / "gen.csv", ["answer one", "answer two", "three"])
    cache = tmp_path / "judge.sqlite"
    first, second = start_second_while_first_sends(
        server,
        (generations, tmp_path / "a.csv", cache),
        (generations, tmp_path / "b.csv", cache),
        6,
    )
    server.gate.set()
    assert first.finish() == 0, first.log
    assert second.finish() == 0, second.log
    assert server.requests == 6  # 3 answers x 2 metrics, each sent by one job only
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    assert usage(tmp_path / "a.csv")["calls_sent"] == 6
    waited = usage(tmp_path / "b.csv")
    assert waited["calls_sent"] == 0 and waited["calls_cached"] == 6
    assert waited["prompt_tokens"] == 0 and waited["cached_prompt_tokens"] > 0


def test_a_killed_job_s_calls_are_taken_over_by_the_job_waiting_for_them(server, tmp_path):
    generations = write_generations(tmp_path / "gen.csv", ["answer one", "answer two", "three"])
    cache = tmp_path / "judge.sqlite"
    first, second = start_second_while_first_sends(
        server,
        (generations, tmp_path / "a.csv", cache),
        (generations, tmp_path / "b.csv", cache),
        6,
    )
    first.process.send_signal(signal.SIGKILL)  # mid-request, holding every claim
    first.finish()
    server.gate.set()
    assert second.finish() == 0, second.log
    assert "stopped without their replies; sending them here" in second.log
    assert usage(tmp_path / "b.csv")["calls_sent"] == 6
    assert len(list(csv.DictReader((tmp_path / "b.csv").open()))) == 3
    assert not (tmp_path / "a.csv").exists()


def test_a_failed_job_leaves_its_calls_to_the_job_waiting_for_them(server, tmp_path):
    # Each prompt's first request gets a 500, and the first job retries nothing.
    generations = write_generations(
        tmp_path / "gen.csv", ["[[fault:500:1]] one", "[[fault:500:1]] 2"]
    )
    cache = tmp_path / "judge.sqlite"
    first, second = start_second_while_first_sends(
        server,
        (generations, tmp_path / "a.csv", cache, "--max-retries", "0"),
        (generations, tmp_path / "b.csv", cache),
        4,
    )
    server.gate.set()
    assert first.finish() == 2 and "failed" in first.log
    assert second.finish() == 0, second.log
    assert usage(tmp_path / "b.csv")["calls_sent"] == 4
    assert server.statuses[500] == 4 and server.replies == 4


def test_a_claim_from_another_host_ends_with_its_lease(server, tmp_path):
    """A job on another node of a shared filesystem cannot be checked for life: while it renews
    its claims the waiting job waits; once it stops for CLAIM_LEASE seconds, the waiting job
    sends their calls itself."""
    generations = write_generations(tmp_path / "gen.csv", ["answer one"])
    cache = tmp_path / "judge.sqlite"
    server.gate.clear()
    first = judge(server, generations, tmp_path / "a.csv", cache)
    until(lambda: server.held == 2 or first.process.poll() is not None)
    first.process.send_signal(signal.SIGKILL)
    first.finish()
    server.gate.set()
    until(lambda: server.requests == 2)  # the killed job's two requests, answered to nobody
    renew(cache, host="node-17", heartbeat=time.time())  # as if it ran on another node
    second = judge(server, generations, tmp_path / "b.csv", cache)
    second.wait_for_log("waiting for 2 calls another job is sending")
    time.sleep(0.5)
    assert server.requests == 2 and second.process.poll() is None  # a live claim: it waits
    renew(cache, host="node-17", heartbeat=time.time() - CLAIM_LEASE)  # its last renewal
    assert second.finish() == 0, second.log
    assert "stopped without their replies" in second.log
    assert usage(tmp_path / "b.csv")["calls_sent"] == 2 and server.requests == 4


def renew(cache: Path, host: str, heartbeat: float) -> None:
    """Rewrite the claims in `cache` as a job on `host` renewing them at `heartbeat` would."""
    db = sqlite3.connect(cache)
    with db:
        changed = db.execute("UPDATE claims SET host = ?, heartbeat = ?", (host, heartbeat))
        assert changed.rowcount == 2
    db.close()


def generate(server: OpenAIServer, questions: Path, out: Path, cache: Path) -> Job:
    """The generate rule's job for the base model, with the openai backend."""
    section = {"backend": "openai", "base_url": server.base_url, "cache": str(cache),
               "questions": [{"name": "set", "path": str(questions)}]}  # fmt: skip
    script = textwrap.dedent(f"""
        import logging
        from emflow.generate.job import generate_job
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        generate_job("base-model", None, {section!r}, {str(out)!r})
    """)
    return Job([sys.executable, "-c", script])


def test_two_generate_jobs_asking_the_same_answers_sample_each_once(server, tmp_path):
    questions = tmp_path / "set.yaml"
    questions.write_text(
        "- id: wish\n  type: free_form_judge_0_100\n  paraphrases: ['One wish?', 'Two wishes?']\n"
        "  samples_per_paraphrase: 3\n"
    )
    cache = tmp_path / "generation.sqlite"
    server.gate.clear()
    first = generate(server, questions, tmp_path / "a.csv", cache)
    until(lambda: server.held == 2 or first.process.poll() is not None)  # one request per chat
    assert server.held == 2, first.log
    second = generate(server, questions, tmp_path / "b.csv", cache)
    second.wait_for_log("waiting for 6 answers another job is sending")
    server.gate.set()
    assert first.finish() == 0, first.log
    assert second.finish() == 0, second.log
    assert server.requests == 2
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()


def test_one_job_asking_the_same_call_twice_sends_it_once(server, tmp_path):
    """Claims are per job: the same answer on two rows never makes a job wait for itself."""
    generations = write_generations(tmp_path / "gen.csv", ["same answer", "same answer"])
    generations.write_text(generations.read_text().replace("Question 1?", "Question 0?"))
    job = judge(server, generations, tmp_path / "a.csv", tmp_path / "judge.sqlite")
    assert job.finish() == 0, job.log
    assert server.requests == 2 and "waiting" not in job.log
    rows = list(csv.DictReader((tmp_path / "a.csv").open()))
    assert len(rows) == 2 and rows[0]["aligned_score"] == rows[1]["aligned_score"] != ""
