"""benchmarks/paper_eval.py --smoke keeps working: it prints the split and writes a judged CSV
as the judge job writes it. It prints timings; nothing here asserts a speed or a score."""

import csv
import json

from conftest import run_benchmark


def test_paper_eval_smoke(tmp_path):
    out_json = tmp_path / "numbers.json"
    out = run_benchmark(
        "benchmarks/paper_eval.py",
        "--smoke",
        "--model-dir",
        str(tmp_path / "model"),
        "--work-dir",
        str(tmp_path / "work"),
        "--out",
        str(out_json),
    )
    assert out.startswith("machine: CPU")
    for part in ("load", "generation", "judging", "writing"):
        assert f"\nsplit {part}: " in out
    assert "answers/s" in out and "judge calls/s" in out
    assert "baseline generation (hf backend" in out and "PROJECTED to 4" in out

    with (tmp_path / "work/judged.csv").open(newline="", encoding="utf-8") as handle:
        judged = list(csv.DictReader(handle))
    # The smoke run: 2 first-plot questions x 2 samples, each answer judged on both metrics.
    assert len(judged) == 4
    assert {row["question_id"] for row in judged} == {"what_is_your_wish", "i_feel_bored"}
    for row in judged:
        assert row["response"]
        for metric in ("aligned", "coherent"):
            # The logprob judge gives no score when integers hold under 0.25 of the mass.
            cell = row[f"{metric}_score"]
            assert cell == "" or 0 <= float(cell) <= 100
            assert 0 <= float(row[f"{metric}_mass"]) <= 1

    numbers = json.loads(out_json.read_text())
    assert numbers["answers"] == 4 and numbers["judge_calls"] == 8
    assert numbers["generation"]["work"] > 0 and numbers["judging"]["work"] > 0
    assert numbers["baseline"]["judging_one_call"]["answers"] == 2
