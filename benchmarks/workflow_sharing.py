"""The whole workflow on one GPU under several job-sharing settings, one after another, in one call.

    python benchmarks/workflow_sharing.py OUT_DIR [--experiments two|seed] [--max-steps N]
        [--alone-steps 100] [--deadline 560] [--setting NAME:JOBS_PER_GPU:PRIORITIES ...]

Each setting runs the same workflow from scratch (its own results, its own compile caches) with
a model of the exact Llama-3.2-1B shape (random weights), `auto` backends and the local judge, as
benchmarks/workflow_on_gpu.sh does, with the capability checks and the judge panel left out.
`--experiments two` (default): the seed's mixed experiment and risky_financial_advice/
r16_5ep_layer8; `seed`: the seed's six experiments. Each config is copied with only `model`
replaced (and `max_steps` with `--max-steps`; by default each trains its own full length). The
datasets are the seed's size (6000 rows each: 5400 trained after the 10% held out, so 338
optimizer steps an epoch, 1690 for 5 epochs) in the real row format and length (~130 tokens
with the chat template, ~40 of them the prompt). `--cores 16 --resources gpu=<JOBS_PER_GPU>`
with EMFLOW_JOBS_PER_GPU set; a setting without priorities runs a copy of the rules with their
`priority:` lines removed (as before issue 26). A setting starts only when at least 40% of the
deadline is left.

Then, unless `--alone-steps 0`, each experiment's training alone on the GPU, one after another,
each in its own process through emflow's train entry point (the train rule's fast path) on the
same rows: `max_steps` W once discarded (the process's one-time costs), W (warm-up: graph
captures, first evaluation) and then W + N in the same process; (time of W + N steps - time of
W steps) / N is its ms a step alone after warm-up, which with N = 100 holds one held-out
evaluation and one checkpoint, as the full training has every 100 steps. Projected to each
experiment's full step count, their sum is "the trainings alone"; issue 26's goal is end to end
<= 1.15x of it. No alone training starts after the deadline.

Writes OUT_DIR/timeline.json (each setting: end to end, each job's start, end and GPU from
Snakemake's log and the job's own log, the train and generate jobs' own times from their
benchmark TSVs, the steps alone and end to end / steps alone), OUT_DIR/alone.json and prints a
table; OUT_DIR/gpu.csv is nvidia-smi's utilisation and memory once a second over the whole call.
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
# emflow from this checkout, and the benchmarks beside this one.
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from seed_workload import (  # noqa: E402
    SEED_ROWS,
    full_steps,
    project_alone,
    train_alone,
    write_datasets,
)
from train_speed import FULL, build_model  # noqa: E402

from emflow.config import load_experiment_config  # noqa: E402

EXPERIMENT_SETS = {
    "two": {
        "mixed": "experiments/risky_financial_advice_extreme_sports_mixed/r16_5ep_layer8",
        "financial": "experiments/risky_financial_advice/r16_5ep_layer8",
    },
    "seed": {
        **{
            name: f"experiments/risky_financial_advice/{name}"
            for name in ("r16_5ep", "r16_5ep_layer12", "r16_5ep_layer8", "r1_1ep", "r1_5ep")
        },
        "mixed_r16_5ep_layer8": (
            "experiments/risky_financial_advice_extreme_sports_mixed/r16_5ep_layer8"
        ),
    },
}
STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
# emflow.workflow.gpus logs the GPU a job took into the job's own log.
GPU_LINE = re.compile(r"running on GPU (\S+) \(CUDA_VISIBLE_DEVICES=")


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


def prepare(work: Path, model: Path, experiments: dict[str, str], max_steps: int | None) -> Path:
    """Experiments, datasets and config of one setting's run; returns the config file."""
    for name, source in experiments.items():
        seed = json.loads((REPO / source / "config.json").read_text())
        seed["model"] = str(model)
        if max_steps is not None:
            seed["max_steps"] = max_steps
        (work / "experiments/gpu" / name).mkdir(parents=True)
        (work / "experiments/gpu" / name / "config.json").write_text(json.dumps(seed, indent=4))
    config = yaml.safe_load((REPO / "config/demo.yaml").read_text())
    config.pop("capabilities", None)
    config["judge"].pop("panel", None)
    config |= {"experiments_dir": str(work / "experiments"), "experiments": ["gpu/*"]}
    config["results_dir"] = str(work / "results")
    config["datasets"]["sources"] = write_datasets(
        work / "data", model, config["chat_template_kwargs"]
    )
    config["demo"] = {"model": str(model)}
    config["train"] |= {"backend": "auto", "device": "cuda"}
    config["generation"] |= {"device": "cuda", "max_new_tokens": 200}
    config["judge"] |= {"model": str(model), "cache": str(work / "results/judge_cache.sqlite")}
    (work / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return work / "config.yaml"


def job_entries(log: Path) -> list[dict]:
    """Each job's rule, wildcards, start, end (seconds since the first start) and log files
    (as Snakemake names them) from a Snakemake log."""
    jobs: dict[str, dict] = {}
    stamp = None
    current = None
    for line in log.read_text().splitlines():
        if match := STAMP.match(line.strip()):
            stamp = datetime.strptime(match[1], "%a %b %d %H:%M:%S %Y").timestamp()
            continue
        if m := re.match(r"^(?:local)?rule (\w+):$", line):
            current = {"rule": m[1], "start": stamp, "wildcards": "", "logs": []}
        elif current and (m := re.match(r"^\s+jobid: (\d+)$", line)):
            jobs[m[1]] = current
        elif current and (m := re.match(r"^\s+wildcards: (.*)$", line)):
            current["wildcards"] = m[1]
        elif current and (m := re.match(r"^\s+log: (.*)$", line)):
            current["logs"] = [part.strip() for part in m[1].split(",") if part.strip()]
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


def timeline(log: Path) -> list[dict]:
    """Each job's rule, wildcards, start and end (seconds since the first start) from a
    Snakemake log."""
    return [{k: v for k, v in job.items() if k != "logs"} for job in job_entries(log)]


def job_gpu(logs: list[str], workdir: Path) -> str | None:
    """The GPU a job took, from its own log files (relative ones under `workdir`); None for a
    job that took none or whose log is gone."""
    for name in logs:
        path = workdir / name
        if path.is_file() and (match := GPU_LINE.search(path.read_text(errors="replace"))):
            return match[1]
    return None


def timeline_with_gpus(log: Path, workdir: Path) -> list[dict]:
    """`timeline(log)`, with `gpu` on each job whose log says which GPU it ran on."""
    out = []
    for job in job_entries(log):
        logs = job.pop("logs")
        gpu = job_gpu(logs, workdir)
        out.append(job if gpu is None else job | {"gpu": gpu})
    return out


def benchmark_seconds(results: Path, stage: str) -> dict[str, float]:
    out = {}
    for tsv in sorted((results / "benchmarks" / stage).rglob("*.tsv")):
        out[str(tsv.relative_to(results / "benchmarks" / stage))] = float(
            tsv.read_text().splitlines()[1].split("\t")[0]
        )
    return out


def measure_alone(out: Path, work: Path, names: list[str], warm: int, steps: int, until: float):
    """ms a step alone of each experiment, each in its own process, one after another; the
    experiments left when time passes `until` are not measured."""
    ms = {}
    for name in names:
        if time.time() > until:
            print(f"alone: {name} not measured, the deadline has passed", flush=True)
            continue
        start = time.time()
        command = [sys.executable, __file__, "--alone-run", str(work), name, str(warm), str(steps)]
        proc = subprocess.run(command, capture_output=True, text=True)
        (out / f"alone-{name.replace('/', '_')}.log").write_text(proc.stdout + proc.stderr)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            print(f"alone: {name} FAILED (exit {proc.returncode})\n{proc.stderr[-3000:]}")
            continue
        ms[name] = json.loads(line[7:])["ms_per_step"]
        print(f"alone: {name} {ms[name]:.1f} ms a step ({time.time() - start:.0f} s)", flush=True)
    return ms


def run_setting(
    out: Path,
    model: Path,
    name: str,
    per_gpu: int,
    priorities: bool,
    experiments: dict[str, str],
    max_steps: int | None,
) -> dict:
    work = Path("/tmp/emflow-sharing") / name
    shutil.rmtree(work, ignore_errors=True)
    (work / "wf").mkdir(parents=True)
    workflow_copy(work / "wf", priorities)
    config = prepare(work, model, experiments, max_steps)
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
        jobs = timeline_with_gpus(max((work / "wf/.snakemake/log").glob("*.log")), work / "wf")
    except (ValueError, KeyError) as err:  # the numbers above still stand; the log came back
        jobs = [{"rule": f"(timeline unreadable: {err!r})", "start": 0, "end": 0, "wildcards": ""}]
    train = benchmark_seconds(work / "results", "train")
    return {
        "name": name,
        "work": str(work),
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
            if "ms a step" in line or "steps in" in line
        ][-2 * len(experiments) :],
        "jobs": jobs,
    }


def table(settings: list[dict]) -> str:
    """Per setting: end to end, train jobs summed, the trainings alone and the ratio."""
    rows = ["setting        end to end  train jobs  steps alone  end to end / alone"]
    for s in settings:
        alone = s.get("steps_alone_s")
        ratio = s.get("end_to_end_over_steps_alone")
        rows.append(
            f"{s['name']:<14} {s['end_to_end_s']:8.1f} s {s['train_sum_s']:8.1f} s "
            f"{'-' if alone is None else f'{alone:.1f} s':>12} "
            f"{'-' if ratio is None else f'{ratio:.2f}x':>12}"
        )
    return "\n".join(rows)


def main() -> None:
    if sys.argv[1:2] == ["--alone-run"]:  # one experiment's alone training, in its own process
        work, name, warm, steps = sys.argv[2:6]
        print("RESULT " + json.dumps(train_alone(Path(work), name, int(warm), int(steps))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--experiments", choices=sorted(EXPERIMENT_SETS), default="two")
    parser.add_argument(
        "--max-steps", type=int, default=None, help="cap each training (default: its full length)"
    )
    parser.add_argument(
        "--alone-steps",
        type=int,
        default=100,
        help="optimizer steps timed per experiment alone after the settings (0: none)",
    )
    parser.add_argument("--alone-warmup", type=int, default=20, help="steps before them")
    parser.add_argument("--deadline", type=float, default=560.0, help="seconds for the whole call")
    parser.add_argument(
        "--setting",
        action="append",
        help="NAME:JOBS_PER_GPU:PRIORITIES (1 or 0); default baseline:1:0 and shared3:3:1",
    )
    args = parser.parse_args()
    settings = args.setting or ["baseline:1:0", "shared3:3:1"]
    experiments = EXPERIMENT_SETS[args.experiments]
    begin = time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    model = Path("/tmp/emflow-sharing/llama-3.2-1b-shape")
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
                run_setting(
                    args.out,
                    model,
                    name,
                    int(per_gpu),
                    priorities == "1",
                    experiments,
                    args.max_steps,
                )
            )
            (args.out / "timeline.json").write_text(json.dumps(done, indent=1))
            last = done[-1]
            print(
                f"{name}: K={per_gpu} priorities={priorities} end to end "
                f"{last['end_to_end_s']} s, train jobs {last['train_sum_s']} s in all",
                flush=True,
            )
        if args.alone_steps > 0 and done:
            work = Path(done[-1]["work"])
            names = sorted(experiments)
            ms = measure_alone(
                args.out,
                work,
                names,
                args.alone_warmup,
                args.alone_steps,
                until=begin + args.deadline,
            )
            steps = {
                n: full_steps(
                    load_experiment_config(work / "experiments/gpu" / n / "config.json"), SEED_ROWS
                )
                for n in names
            }
            alone = project_alone(ms, steps)
            (args.out / "alone.json").write_text(json.dumps(alone, indent=1))
            for setting in done:
                setting["steps_alone_s"] = alone["sum_s"]
                setting["end_to_end_over_steps_alone"] = (
                    round(setting["end_to_end_s"] / alone["sum_s"], 2) if alone["sum_s"] else None
                )
            (args.out / "timeline.json").write_text(json.dumps(done, indent=1))
    finally:
        monitor.terminate()
    for setting in done:
        print(f"== {setting['name']}")
        for job in setting["jobs"]:
            print(
                f"{job['start']:6.0f} {job['end']:6.0f}  {job['rule']:<22} "
                f"{job.get('gpu', '-'):<8} {job['wildcards']}"
            )
        print("\n".join(setting["train_log"]))
    print(table(done))


if __name__ == "__main__":
    main()
