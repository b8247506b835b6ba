"""The whole workflow on one GPU under several job-sharing settings, one after another, in one call.

    python benchmarks/workflow_sharing.py OUT_DIR [--max-steps 800] [--deadline 560]
        [--setting NAME:JOBS_PER_GPU:PRIORITIES ...]

Each setting runs the same workflow from scratch (its own results, its own compile caches) on
the seed's mixed experiment and risky_financial_advice/r16_5ep_layer8, with a model of the exact
Llama-3.2-1B shape (random weights), synthetic datasets of the real format, `auto` backends and
the local judge, as benchmarks/workflow_on_gpu.sh does, with the capability checks and the judge
panel left out. `--cores 16 --resources gpu=<JOBS_PER_GPU>` with EMFLOW_JOBS_PER_GPU set; a
setting without priorities runs a copy of the rules with their `priority:` lines removed (as
before issue 26). A setting starts only when at least 40% of the deadline is left.

Writes OUT_DIR/timeline.json (each setting: end to end, each job's start and end from
Snakemake's log, the train and generate jobs' own times from their benchmark TSVs) and prints a
table; OUT_DIR/gpu.csv is nvidia-smi's utilisation and memory once a second over all settings.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
EXPERIMENTS = {
    "mixed": "experiments/risky_financial_advice_extreme_sports_mixed/r16_5ep_layer8",
    "financial": "experiments/risky_financial_advice/r16_5ep_layer8",
}
STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")


def workflow_copy(target: Path, priorities: bool) -> None:
    """The workflow's files under `target`; without priorities, its rules lose `priority:`."""
    target.mkdir(parents=True, exist_ok=True)
    for name in ("Snakefile", "rules", "scripts", "config", "emflow", "envs"):
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, target / name)
    if not priorities:
        for rules in (target / "rules").glob("*.smk"):
            lines = rules.read_text().splitlines(keepends=True)
            rules.write_text("".join(ln for ln in lines if not ln.strip().startswith("priority:")))


def prepare(work: Path, model: Path, max_steps: int) -> Path:
    """Experiments and config of one setting's run; returns the config file."""
    for name, source in EXPERIMENTS.items():
        seed = json.loads((REPO / source / "config.json").read_text())
        seed.update(model=str(model), max_steps=max_steps)
        (work / "experiments/gpu" / name).mkdir(parents=True)
        (work / "experiments/gpu" / name / "config.json").write_text(json.dumps(seed, indent=4))
    config = yaml.safe_load((REPO / "config/demo.yaml").read_text())
    config.pop("capabilities", None)
    config["judge"].pop("panel", None)
    config |= {"experiments_dir": str(work / "experiments"), "experiments": ["gpu/*"]}
    config["results_dir"] = str(work / "results")
    config["demo"] = {"model": str(model), "synthetic_rows": 3000}
    config["train"] |= {"backend": "auto", "device": "cuda"}
    config["generation"] |= {"device": "cuda", "max_new_tokens": 200}
    config["judge"] |= {"model": str(model), "cache": str(work / "results/judge_cache.sqlite")}
    (work / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return work / "config.yaml"


def timeline(log: Path) -> list[dict]:
    """Each job's rule, wildcards, start and end (seconds since the first start) from a
    Snakemake log."""
    jobs: dict[str, dict] = {}
    stamp = None
    current = None
    for line in log.read_text().splitlines():
        if match := STAMP.match(line.strip()):
            stamp = datetime.strptime(match[1], "%a %b %d %H:%M:%S %Y").timestamp()
            continue
        if m := re.match(r"^(?:local)?rule (\w+):$", line):
            current = {"rule": m[1], "start": stamp, "wildcards": ""}
        elif current and (m := re.match(r"^\s+jobid: (\d+)$", line)):
            jobs[m[1]] = current
        elif current and (m := re.match(r"^\s+wildcards: (.*)$", line)):
            current["wildcards"] = m[1]
        elif m := re.match(r"^Finished jobid: (\d+)", line):
            jobs[m[1]]["end"] = stamp
    first = min(job["start"] for job in jobs.values())
    return sorted(
        (
            {**job, "start": job["start"] - first, "end": job.get("end", first) - first}
            for job in jobs.values()
        ),
        key=lambda job: (job["start"], job["rule"]),
    )


def benchmark_seconds(results: Path, stage: str) -> dict[str, float]:
    out = {}
    for tsv in sorted((results / "benchmarks" / stage).rglob("*.tsv")):
        out[str(tsv.relative_to(results / "benchmarks" / stage))] = float(
            tsv.read_text().splitlines()[1].split("\t")[0]
        )
    return out


def run_setting(out: Path, model: Path, name: str, per_gpu: int, priorities: bool, steps: int):
    work = Path("/tmp/emflow-sharing") / name
    shutil.rmtree(work, ignore_errors=True)
    (work / "wf").mkdir(parents=True)
    workflow_copy(work / "wf", priorities)
    config = prepare(work, model, steps)
    env = os.environ | {
        "EMFLOW_JOBS_PER_GPU": str(per_gpu),
        "PYTHONPATH": os.pathsep.join([str(work / "wf"), os.environ.get("PYTHONPATH", "")]),
        # Each setting compiles from nothing: a cache warmed by the one before would flatter it.
        "TORCHINDUCTOR_CACHE_DIR": str(work / "inductor"),
        "TRITON_CACHE_DIR": str(work / "triton"),
        "EMFLOW_GPU_LOCK_DIR": str(work / "locks"),
    }
    command = [
        sys.executable,
        *("-m", "snakemake", "--configfile", str(config), "--replace-workflow-config"),
        *("--cores", "16", "--resources", f"gpu={per_gpu}", "--show-failed-logs"),
    ]
    start = time.time()
    result = subprocess.run(command, cwd=work / "wf", env=env, capture_output=True, text=True)
    seconds = time.time() - start
    (out / f"{name}.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        print(result.stdout[-3000:] + result.stderr[-6000:])
        raise SystemExit(f"setting {name} failed")
    try:
        jobs = timeline(max((work / "wf/.snakemake/log").glob("*.log")))
    except (ValueError, KeyError) as err:  # the numbers above still stand; the log came back
        jobs = [{"rule": f"(timeline unreadable: {err!r})", "start": 0, "end": 0, "wildcards": ""}]
    train = benchmark_seconds(work / "results", "train")
    return {
        "name": name,
        "jobs_per_gpu": per_gpu,
        "priorities": priorities,
        "end_to_end_s": round(seconds, 1),
        "train_job_s": train,
        "train_sum_s": round(sum(train.values()), 1),
        "generate_job_s": benchmark_seconds(work / "results", "generate"),
        "train_log": [
            line
            for path in sorted((work / "results/logs/train").rglob("*.log"))
            for line in path.read_text().splitlines()
            if "ms/step" in line or "steps in" in line
        ][-8:],
        "jobs": jobs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--max-steps", type=int, default=800)
    parser.add_argument("--deadline", type=float, default=560.0, help="seconds for all settings")
    parser.add_argument(
        "--setting",
        action="append",
        help="NAME:JOBS_PER_GPU:PRIORITIES (1 or 0); default baseline:1:0 and shared3:3:1",
    )
    args = parser.parse_args()
    settings = args.setting or ["baseline:1:0", "shared3:3:1"]
    begin = time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    model = Path("/tmp/emflow-sharing/llama-3.2-1b-shape")
    sys.path.insert(0, str(REPO / "benchmarks"))
    from train_speed import FULL, build_model

    if not (model / "config.json").exists():
        build_model(model, FULL)
    monitor = subprocess.Popen(
        "nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 1",
        shell=True,
        stdout=(args.out / "gpu.csv").open("w"),
    )
    done = []
    try:
        for setting in settings:
            name, per_gpu, priorities = setting.split(":")
            left = args.deadline - (time.time() - begin)
            if done and left < 0.4 * args.deadline:
                print(f"skipped {name}: {left:.0f} s left")
                continue
            done.append(
                run_setting(args.out, model, name, int(per_gpu), priorities == "1", args.max_steps)
            )
            (args.out / "timeline.json").write_text(json.dumps(done, indent=1))
            last = done[-1]
            print(
                f"{name}: K={per_gpu} priorities={priorities} end to end "
                f"{last['end_to_end_s']} s, train jobs {last['train_sum_s']} s in all",
                flush=True,
            )
    finally:
        monitor.terminate()
    for setting in done:
        print(f"== {setting['name']}")
        for job in setting["jobs"]:
            print(f"{job['start']:6.0f} {job['end']:6.0f}  {job['rule']:<22} {job['wildcards']}")
        print("\n".join(setting["train_log"]))


if __name__ == "__main__":
    main()
