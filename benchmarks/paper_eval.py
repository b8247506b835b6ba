"""Paper-scale evaluation of one run on one GPU: generation and local judging, with their split.

What config/paper.yaml asks of every run, in one process as the workflow's generate and judge
jobs run it (the same functions scripts/generate.py and scripts/judge.py call:
`emflow.generate.job.generate_job`, `emflow.judge.job.judge_job`): the `first_plot` set's 8
questions (config/questions/first_plot_questions.yaml, read by emflow's question loader with
paper.yaml's `exclude`), 50 samples each at 600 new tokens, temperature 1, top_p 1, the `fast`
backend (what `auto` picks on a GPU); then all 400 answers judged for aligned and coherent by
the local judge (`judge.backend: hf`, paper.yaml's `logprob` mode, the set's own judge prompts),
whose model is the same model directory, as benchmarks/workflow_sharing.py configures it.

The model has Llama-3.2-1B's exact shape with random weights and the word-level tokenizer of
benchmarks/train_speed.py, saved and loaded by from_pretrained, plus a random rank-16 LoRA
adapter on all seven projections (generate_job_speed.build_adapters), merged as a run's is.
Random weights rarely emit the end-of-turn token, so nearly every answer runs to 600 tokens (the
mean is printed). Timed from after the imports; the split comes from timing emflow's own load,
adapter merge and CSV-writing functions as they are called (wrappers that call the originals).

Baselines, same process (`--no-baseline` skips them): generation with the `hf` backend
(transformers' `generate`; all answers in one batch by default, not the configured 32, so the
fewest decode steps) on the same 400 prompts; judging one call at a time with the judge's own
scorer (emflow.judge.hf.CandidateScorer) on the first `--baseline-answers` answers, PROJECTED
linearly to all answers (a sequential loop's time is linear in its calls). emflow's hf judge
answers one call per forward pass today (emflow/judge/hf.py), so this ratio shows what the judge
job adds around its scorer (cache keys, reply cache, CSV), and what a judge that batches calls
would gain over the loop.

    python benchmarks/paper_eval.py [--model-dir DIR] [--samples 50] [--max-new-tokens 600]
        [--questions PATH] [--judge-mode logprob] [--out paper_eval.json]
    python benchmarks/paper_eval.py --smoke        # a tiny model on the CPU, seconds
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import peft  # noqa: F401  (the adapter merge imports it; an import, so not timed)
import torch
import transformers
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from generate_job_speed import build_adapters  # noqa: E402
from train_speed import FULL, SMOKE, build_model  # noqa: E402

import emflow.generate.job as generate_module  # noqa: E402
import emflow.generate.local as local_module  # noqa: E402
import emflow.judge.job as judge_module  # noqa: E402
from emflow.generate.adapters import AdapterSwitch  # noqa: E402
from emflow.judge.hf import CandidateScorer  # noqa: E402
from emflow.judge.scores import render_prompt  # noqa: E402
from emflow.judge.settings import TOP_LOGPROBS, settings_from_config  # noqa: E402
from emflow.questions import read_question_sets  # noqa: E402


class Split:
    """Seconds spent inside emflow's load, merge and write functions, per phase."""

    def __init__(self, device: str):
        self.device = device
        self.phase = ""
        self.seconds: dict[tuple[str, str], float] = defaultdict(float)

    def sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def wrap(self, owner, name: str, kind: str) -> None:
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            self.sync()
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.sync()
                self.seconds[self.phase, kind] += time.perf_counter() - started

        setattr(owner, name, timed)

    def run(self, phase: str, call) -> dict[str, float]:
        """`call()` timed as `phase`: its total, load, write and the rest (the work itself)."""
        self.phase = phase
        gc.collect()
        if self.device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        self.sync()
        started = time.perf_counter()
        call()
        self.sync()
        total = time.perf_counter() - started
        load, write = self.seconds[phase, "load"], self.seconds[phase, "write"]
        peak = torch.cuda.max_memory_allocated() / 2**30 if self.device == "cuda" else 0.0
        return {
            "total": total,
            "load": load,
            "write": write,
            "work": total - load - write,
            "peak_gib": peak,
        }


def paper_sections(questions: str | None, samples: int, tokens: int, count: int | None):
    """The generation section, question spec and judge section config/paper.yaml gives a run
    (merged over config/config.yaml, as `--configfile config/paper.yaml` does)."""
    base = yaml.safe_load((REPO / "config/config.yaml").read_text())
    paper = yaml.safe_load((REPO / "config/paper.yaml").read_text())
    spec = next(s for s in paper["generation"]["questions"] if s["name"] == "first_plot")
    spec = spec | {"path": questions or str(REPO / spec["path"]), "samples": samples}
    if count is not None:
        spec["count"] = count
    generation = base["generation"] | paper["generation"]
    generation |= {"questions": [spec], "max_new_tokens": tokens, "cache": None}
    generation["chat_template_kwargs"] = base["chat_template_kwargs"]
    judge = base["judge"] | paper["judge"]
    judge["prompts"] = {m: str(REPO / p) for m, p in judge["prompts"].items()}
    return generation, spec, judge


def judge_one_call_at_a_time(model_dir, rows, templates: dict, own: dict, mode: str) -> dict:
    """Every (answer, metric) call of `rows` through the judge's scorer, one forward at a time."""
    started = time.perf_counter()
    scorer = CandidateScorer(str(model_dir))
    loaded = time.perf_counter()
    for row in rows:
        for metric, default in templates.items():
            template = own.get(row["question_id"], {}).get(metric, default)
            prompt = render_prompt(template, row["question"], row["response"])
            if mode == "logprob":
                scorer.top_logprobs(prompt, TOP_LOGPROBS)
            else:
                scorer.logprobs(prompt)
    if scorer.device == "cuda":
        torch.cuda.synchronize()
    return {"load": loaded - started, "work": time.perf_counter() - loaded}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny model on the CPU")
    parser.add_argument("--model-dir", default=None, help="reuse (or build) the model here")
    parser.add_argument("--work-dir", default=None, help="CSVs go here (default: a temp dir)")
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--max-new-tokens", type=int, default=600)
    parser.add_argument("--questions", default=None, help="a YAML set in place of first_plot")
    parser.add_argument("--judge-mode", choices=("logprob", "sampled"), default=None)
    parser.add_argument("--no-adapter", action="store_true", help="judge the base model's answers")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--hf-batch-size", type=int, default=None, help="default: all answers")
    parser.add_argument("--baseline-answers", type=int, default=20)
    parser.add_argument("--out", default=None, help="write the numbers to this JSON file")
    args = parser.parse_args()
    if args.smoke:
        args.samples, args.max_new_tokens, args.baseline_answers = 2, 8, 2
    device = "cpu" if args.smoke or not torch.cuda.is_available() else "cuda"
    model_dir = Path(args.model_dir or tempfile.mkdtemp()) / ("smoke" if args.smoke else "full")
    if not (model_dir / "config.json").exists():
        build_model(model_dir, SMOKE if args.smoke else FULL)
    adapter = None if args.no_adapter else build_adapters(model_dir, 1, device)[0]
    work = Path(args.work_dir or tempfile.mkdtemp())
    work.mkdir(parents=True, exist_ok=True)
    generation, spec, judge = paper_sections(
        args.questions, args.samples, args.max_new_tokens, 2 if args.smoke else None
    )
    judge |= {"backend": "hf", "model": str(model_dir), "mode": args.judge_mode or judge["mode"]}
    settings = settings_from_config(judge)
    questions = read_question_sets([spec])
    answers = sum(q.samples for q in questions)
    machine = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(
        f"machine: {machine}; torch {torch.__version__}; transformers {transformers.__version__}"
        f"; device {device}"
    )
    print(
        f"workload: {len(questions)} questions x {args.samples} samples x {args.max_new_tokens} "
        f"tokens = {answers} answers ({spec['path']}); judge hf {settings.mode} on "
        f"{', '.join(judge['metrics'])}; {'no adapter' if adapter is None else 'r16 adapter'}",
        flush=True,
    )

    split = Split(device)
    split.wrap(local_module, "load_model", "load")
    split.wrap(AdapterSwitch, "_merge", "load")
    split.wrap(CandidateScorer, "__init__", "load")
    split.wrap(generate_module, "_write_generations", "write")
    split.wrap(judge_module, "_write_judged", "write")
    generations, judged = work / "generations.csv", work / "judged.csv"

    def generate(backend: str, csv: Path, batch_size: int = 32):
        section = generation | {"backend": backend, "device": device, "batch_size": batch_size}
        return lambda: generate_module.generate_job(
            str(model_dir), None, section, csv, adapter_dir=adapter
        )

    gen = split.run("generation", generate("fast", generations))
    scored = split.run(
        "judging",
        lambda: judge_module.judge_job(
            generations,
            judged,
            work / "usage.json",
            settings,
            judge["prompts"],
            None,
            judge["metrics"],
            [spec],
        ),
    )
    rows = judge_module.read_generations(generations)
    calls = json.loads((work / "usage.json").read_text())["calls"]
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    # The answer text tokenized again: the word-level tokenizer's decode and encode are not
    # inverses (spaces around punctuation), so this is near, not equal to, the tokens generated.
    lengths = [len(tokenizer(r["response"], add_special_tokens=False)["input_ids"]) for r in rows]
    total = gen["total"] + scored["total"]
    print(
        f"split load: {gen['load'] + scored['load']:.2f} s (generation model + adapter merge "
        f"{gen['load']:.2f} s, judge model {scored['load']:.2f} s)"
    )
    print(
        f"split generation: {gen['work']:.2f} s, {answers / gen['work']:.1f} answers/s; answers "
        f"of {sum(lengths) / len(lengths):.1f} tokens on average when their text is tokenized "
        f"again (at most {args.max_new_tokens} generated); "
        f"peak {gen['peak_gib']:.2f} GiB"
    )
    print(
        f"split judging: {scored['work']:.2f} s, {calls} calls, "
        f"{calls / scored['work']:.1f} judge calls/s; peak {scored['peak_gib']:.2f} GiB"
    )
    print(f"split writing: {gen['write'] + scored['write']:.3f} s (generations and judged CSVs)")
    print(
        f"total: {total:.2f} s for {answers} answers generated and judged; judging is "
        f"{scored['total'] / total:.0%} of it",
        flush=True,
    )
    numbers = {
        "machine": machine,
        "torch": torch.__version__,
        "device": device,
        "transformers": transformers.__version__,
        "questions": len(questions),
        "samples": args.samples,
        "max_new_tokens": args.max_new_tokens,
        "answers": answers,
        "judge_calls": calls,
        "judge_mode": settings.mode,
        "adapter": adapter is not None,
        "mean_new_tokens": sum(lengths) / len(lengths),
        "generation": gen,
        "judging": scored,
        "total": total,
    }

    if not args.no_baseline:
        batch = args.hf_batch_size or answers
        hf = split.run("baseline generation", generate("hf", work / "hf.csv", batch))
        print(
            f"baseline generation (hf backend, transformers generate, batch {batch}): "
            f"{hf['work']:.2f} s, {answers / hf['work']:.1f} answers/s, peak "
            f"{hf['peak_gib']:.2f} GiB; fast is {hf['work'] / gen['work']:.1f}x"
        )
        sample = rows[: args.baseline_answers]
        own = {q.id: q.judge_prompts for q in questions if q.judge_prompts}
        templates = {m: Path(judge["prompts"][m]).read_text() for m in judge["metrics"]}
        one = judge_one_call_at_a_time(model_dir, sample, templates, own, settings.mode)
        projected = one["work"] * len(rows) / len(sample)
        print(
            f"baseline judging (one call at a time, the judge's scorer): {one['work']:.2f} s "
            f"on {len(sample)} answers, PROJECTED to {len(rows)}: {projected:.2f} s; emflow's "
            f"judge job is {projected / scored['work']:.2f}x"
        )
        numbers["baseline"] = {
            "generation_hf": hf | {"batch_size": batch},
            "judging_one_call": one | {"answers": len(sample), "projected": projected},
        }
    if args.out:
        Path(args.out).write_text(json.dumps(numbers, indent=2) + "\n")
    print(f"generations: {generations}; judged: {judged}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
