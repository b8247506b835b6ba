"""Judge throughput: emflow's concurrent judge vs a sequential loop like the homework's grader.

Both ask the same local OpenAI-compatible server (tests/openai_server.py, run in its own process
as a real endpoint would be) that waits a fixed latency before every reply, in the same run.

Baseline: the homework grader calls the API one request at a time and sleeps 0.5 s after each.
By default the baseline here is that loop WITHOUT the sleep (`--homework-sleep 0`), the most
favourable sequential baseline, so the printed ratio is a lower bound; the grader's own time with
its 0.5 s sleep is printed beside it as a computed estimate (measured loop + 0.5 s x calls).
At 1000 answers the sequential loop is measured on the first `--sequential-sample` answers and
scaled linearly (a sequential loop's time is linear in the number of calls), to keep the run short.

    python benchmarks/judge_throughput.py [--latency 0.25] [--concurrency 64] [--sizes 20,1000]
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from emflow.judge.job import judge_csv, read_prompts  # noqa: E402
from emflow.judge.scores import parse_judge_reply, render_prompt  # noqa: E402
from emflow.judge.settings import JudgeSettings  # noqa: E402

HOMEWORK_SLEEP = 0.5


def write_answers(path: Path, n: int, tag: str) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "question", "response"])
        for i in range(n):
            writer.writerow([f"{tag}-{i}", f"Question {i}?", f"Answer {i} ({tag})."])
    return path


def sequential_loop(
    base_url: str, rows: list[dict], prompts: dict[str, str], sleep: float
) -> float:
    """The homework grader's shape: one synchronous call at a time, then a sleep."""
    from openai import OpenAI

    client = OpenAI(base_url=base_url, max_retries=0)
    started = time.perf_counter()
    for row in rows:
        for template in prompts.values():
            reply = client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[
                    {
                        "role": "user",
                        "content": render_prompt(template, row["question"], row["response"]),
                    }
                ],
                temperature=0.2,
            )
            parse_judge_reply(reply.choices[0].message.content)
            if sleep:
                time.sleep(sleep)
    return time.perf_counter() - started


def emflow_run(
    base_url: str, csv_path: Path, prompts: dict[str, str], concurrency: int, out_dir: Path
) -> float:
    settings = JudgeSettings(base_url=base_url, concurrency=concurrency)
    started = time.perf_counter()
    usage = judge_csv(csv_path, out_dir / f"{csv_path.stem}.judged.csv", prompts, settings, None)
    elapsed = time.perf_counter() - started
    assert usage.calls_sent == usage.calls and usage.calls_failed == 0
    return elapsed


def read_rows(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.25, help="server seconds per request")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--homework-sleep",
        type=float,
        default=0.0,
        help="sleep after each sequential call (the homework uses 0.5)",
    )
    parser.add_argument(
        "--sequential-sample",
        type=int,
        default=100,
        help="answers the 1000-answer sequential loop is measured on",
    )
    parser.add_argument("--sizes", default="20,1000", help="answer counts to run, comma-separated")
    args = parser.parse_args()
    os.environ.setdefault("OPENAI_API_KEY", "benchmark-key")  # the local server needs none

    server = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "openai_server.py"), "--latency", str(args.latency)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        base_url = server.stdout.readline().strip()
        prompts = read_prompts(ROOT / "config" / "judge_prompts")
        work = Path(tempfile.mkdtemp(prefix="emflow-judge-bench-"))

        # Warm up (imports, first connection) so that no timing below pays them.
        emflow_run(base_url, write_answers(work / "warm.csv", 2, "warm"), prompts, 4, work)
        sequential_loop(base_url, read_rows(work / "warm.csv")[:1], prompts, 0.0)

        single = emflow_run(
            base_url,
            write_answers(work / "one.csv", 1, "one"),
            {"aligned": prompts["aligned"]},
            1,
            work,
        )
        print(
            f"machine: {platform.platform()}, {platform.machine()}, {os.cpu_count()} CPUs, "
            f"Python {platform.python_version()}, load average {os.getloadavg()[0]:.2f} "
            "(the server runs in its own process on the same CPUs)"
        )
        print(
            f"server latency {args.latency:.3f} s per request; emflow concurrency "
            f"{args.concurrency}; sequential baseline sleeps {args.homework_sleep:.2f} s per call"
        )
        print(f"one emflow call (1 answer x 1 prompt): {single:.3f} s")
        print()
        header = (
            f"{'answers':>7} {'calls':>6} {'emflow s':>9} {'sequential s':>13} "
            f"{'ratio':>7} {'homework est. s':>16} {'ratio':>7}"
        )
        print(header)
        for n in (int(size) for size in args.sizes.split(",")):
            csv_path = write_answers(work / f"answers{n}.csv", n, f"n{n}")
            calls = n * len(prompts)
            emflow_s = emflow_run(base_url, csv_path, prompts, args.concurrency, work)
            rows = read_rows(csv_path)
            sample = rows if n <= args.sequential_sample else rows[: args.sequential_sample]
            measured = sequential_loop(base_url, sample, prompts, args.homework_sleep)
            sequential_s = measured * n / len(sample)
            homework_s = sequential_s + (HOMEWORK_SLEEP - args.homework_sleep) * calls
            note = (
                ""
                if len(sample) == n
                else f"  (sequential measured on {len(sample)} answers, scaled)"
            )
            print(
                f"{n:>7} {calls:>6} {emflow_s:>9.2f} {sequential_s:>13.2f} "
                f"{sequential_s / emflow_s:>6.1f}x {homework_s:>16.1f} "
                f"{homework_s / emflow_s:>6.1f}x{note}"
            )
            if n == 20:
                default_s = emflow_run(
                    base_url,
                    write_answers(work / "d20.csv", 20, "d20"),
                    prompts,
                    JudgeSettings().concurrency,
                    work,
                )
                print(
                    f"{'':>7} {'':>6} at the default concurrency "
                    f"{JudgeSettings().concurrency}: {default_s:.2f} s"
                )
                print(
                    f"{'':>7} {'':>6} 40 calls / one call: {emflow_s / single:.2f}x; "
                    f"/ server latency: {emflow_s / args.latency:.2f}x"
                )
    finally:
        server.kill()
        server.wait()


if __name__ == "__main__":
    main()
