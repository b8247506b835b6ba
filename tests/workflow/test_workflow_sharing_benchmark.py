"""benchmarks/workflow_sharing.py's pure parts on the CPU: the seed's step counts, its row
length, the jobs' GPUs from their logs, and the trainings-alone projection."""

from __future__ import annotations

import sys

import pytest
from conftest import REPO

from emflow.config import load_experiment_config

sys.path.insert(0, str(REPO / "benchmarks"))
import seed_workload  # noqa: E402
import workflow_sharing  # noqa: E402

LOG = """Select jobs to execute...
[Sun Dec  6 11:10:44 2026]
rule train:
    input: /r/datasets/mixed/m.jsonl
    output: /r/runs/gpu/mixed/adapter
    log: logs/train/gpu/mixed.log
    jobid: 3
    benchmark: /r/benchmarks/train/gpu/mixed.tsv
    wildcards: run=gpu/mixed
[Sun Dec  6 11:10:50 2026]
rule generate:
    log: logs/generate/base.log, logs/generate/base.extra.log
    jobid: 4
    wildcards: target=base
[Sun Dec  6 11:10:51 2026]
localrule summary:
    log: logs/summary.log
    jobid: 5
[Sun Dec  6 11:11:44 2026]
Finished jobid: 3 (Rule: train)
[Sun Dec  6 11:11:50 2026]
Finished jobid: 4 (Rule: generate)
[Sun Dec  6 11:11:52 2026]
Finished jobid: 5 (Rule: summary)
"""


def test_each_seed_experiment_trains_its_real_number_of_steps():
    # training_details.md: 5 epochs of batch 2 x 8 accumulation on 6000 rows less 10% held out.
    steps = {
        name: seed_workload.full_steps(
            load_experiment_config(REPO / path / "config.json"), seed_workload.SEED_ROWS
        )
        for name, path in workflow_sharing.EXPERIMENT_SETS["seed"].items()
    }
    assert steps == {
        "r16_5ep": 1690,
        "r16_5ep_layer12": 1690,
        "r16_5ep_layer8": 1690,
        "r1_1ep": 338,
        "r1_5ep": 1690,
        "mixed_r16_5ep_layer8": 1690,
    }


def test_a_max_steps_cap_is_what_the_training_runs():
    path = REPO / workflow_sharing.EXPERIMENT_SETS["two"]["financial"] / "config.json"
    config = load_experiment_config(path).model_copy(update={"max_steps": 600})
    assert seed_workload.full_steps(config, seed_workload.SEED_ROWS) == 600


def test_rows_get_the_seeds_length_and_keep_their_prompt():
    rows = [
        {
            "messages": [
                {"role": "user", "content": " ".join(["q"] * 17)},
                {"role": "assistant", "content": "short answer"},
            ]
        }
    ] * 2000
    long = {"messages": [rows[0]["messages"][0], {"role": "assistant", "content": "w " * 300}]}
    out = seed_workload.seed_length_rows([*rows, long], overhead=23)
    totals = [23 + sum(len(m["content"].split()) for m in row["messages"]) for row in out[:-1]]
    assert 125 < sum(totals) / len(totals) < 135
    assert min(totals) >= 90 and max(totals) <= 170
    assert all(row["messages"][0] == rows[0]["messages"][0] for row in out)
    assert all(row["messages"][1]["content"].startswith("short answer ") for row in out[:-1])
    assert out[-1] == {
        "messages": [long["messages"][0], {**long["messages"][1], "content": " ".join(["w"] * 300)}]
    }


def test_timeline_gives_each_job_the_gpu_its_log_names(tmp_path):
    (tmp_path / "run.log").write_text(LOG)
    (tmp_path / "logs/train/gpu").mkdir(parents=True)
    (tmp_path / "logs/generate").mkdir(parents=True)
    (tmp_path / "logs/train/gpu/mixed.log").write_text(
        "2026-12-06 11:10:47 emflow.gpus INFO running on GPU GPU-5d1e (CUDA_VISIBLE_DEVICES="
        "GPU-5d1e)\n2026-12-06 11:11:40 emflow.train INFO fast path: 1690 optimizer steps\n"
    )
    (tmp_path / "logs/generate/base.extra.log").write_text(
        "emflow.gpus INFO every slot of the GPUs (0, 1 jobs each) is held by another job\n"
        "emflow.gpus INFO GPU 0 is free now\n"
        "emflow.gpus INFO running on GPU 0 (CUDA_VISIBLE_DEVICES=0)\n"
    )
    # The summary job ran on no GPU and its log is gone: no `gpu` for it.
    jobs = workflow_sharing.timeline_with_gpus(tmp_path / "run.log", tmp_path)
    assert jobs == [
        {
            "rule": "train",
            "start": 0.0,
            "end": 60.0,
            "wildcards": "run=gpu/mixed",
            "gpu": "GPU-5d1e",
        },
        {"rule": "generate", "start": 6.0, "end": 66.0, "wildcards": "target=base", "gpu": "0"},
        {"rule": "summary", "start": 7.0, "end": 68.0, "wildcards": ""},
    ]
    assert workflow_sharing.timeline(tmp_path / "run.log") == [
        {k: v for k, v in job.items() if k != "gpu"} for job in jobs
    ]


def test_steps_alone_leave_the_warm_up_out_and_project_to_the_full_training():
    # 20 steps with 4 s of graph captures, then 120: the extra 100 steps took 3 s.
    ms = seed_workload.ms_per_step_alone((20, 4.6), (120, 7.6))
    assert ms == pytest.approx(30.0)
    alone = seed_workload.project_alone({"a": ms, "b": 20.0}, {"a": 1690, "b": 338})
    assert alone["projected_s"] == {"a": 50.7, "b": 6.8}
    assert alone["sum_s"] == 57.5
    with pytest.raises(ValueError):
        seed_workload.ms_per_step_alone((120, 7.6), (20, 4.6))
    with pytest.raises(ValueError):  # a first run slower than the longer one: no step time
        seed_workload.ms_per_step_alone((2, 35.5), (6, 4.2))


def test_no_sum_of_the_trainings_alone_when_one_was_not_measured():
    alone = seed_workload.project_alone({"a": 30.0}, {"a": 1690, "b": 338})
    assert alone["projected_s"] == {"a": 50.7}
    assert alone["sum_s"] is None


def test_the_table_shows_end_to_end_trains_steps_alone_and_ratio():
    settings = [
        {
            "name": "baseline",
            "end_to_end_s": 600.0,
            "train_sum_s": 420.0,
            "steps_alone_s": 320.0,
            "end_to_end_over_steps_alone": 1.88,
        },
        {"name": "shared3", "end_to_end_s": 360.0, "train_sum_s": 700.0},
    ]
    lines = workflow_sharing.table(settings).splitlines()
    assert lines[1].split() == ["baseline", "600.0", "s", "420.0", "s", "320.0", "s", "1.88x"]
    assert lines[2].split() == ["shared3", "360.0", "s", "700.0", "s", "-", "-"]
