"""The judge stage: score each generated answer for every judge prompt (aligned, coherent).

Backends (one module each, behind `emflow.judge.backend.JudgeBackend`, found by name in
`emflow.judge.registry.BACKENDS`): `openai` (any OpenAI-compatible endpoint, concurrent, with
retries) and `hf` (a local transformers model, scored exactly). Modes: `sampled` (the homework's:
the judge writes a number, CODE or REFUSAL; k draws averaged) and `logprob` (the paper's: the
probability-weighted mean over one-token integer replies). Every reply is stored in a
`ReplyCache` as it arrives; scores are computed from stored replies (`emflow.judge.scores`), so
judging an unchanged CSV again sends nothing and prints identical scores.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from emflow.atomic import atomic_path, write_text_atomic
from emflow.cache import CachedReply, ReplyCache, cache_key
from emflow.csv_table import read_csv_table
from emflow.errors import EmflowError
from emflow.judge.backend import JudgeBackend, JudgeCall, JudgeProgress, JudgeUsage
from emflow.judge.registry import BACKENDS
from emflow.judge.scores import (
    aggregate_samples,
    format_score,
    logprob_score,
    parse_judge_reply,
    render_prompt,
)
from emflow.judge.settings import LOGPROB_SEED, TOP_LOGPROBS, JudgeSettings, setting_choices
from emflow.questions import read_question_sets

logger = logging.getLogger("emflow.judge")

GENERATIONS_COLUMNS = ("id", "question", "response")


# ---------------------------------------------------------------------------------------------
# Inputs


def read_generations(path: str | os.PathLike) -> list[dict[str, str]]:
    """Rows of a homework-format generations CSV (id, question, response), validated.

    Columns after those three (emflow's question_id, question_set, paraphrase, sample, system)
    are kept, in the file's order, and carried into the judged CSV.
    """
    return _generations_table(path)[0]


def _generations_table(path: str | os.PathLike) -> tuple[list[dict[str, str]], list[int]]:
    """The rows of read_generations and the line of the file where each row begins."""
    path = Path(path)
    expected = ",".join(GENERATIONS_COLUMNS)
    if not path.is_file():
        raise EmflowError(f"{path}: no such file; pass a generations CSV ({expected}).")
    # Strict: a cell cut at an unquoted comma or a column named twice would be judged silently.
    table = read_csv_table(
        path, GENERATIONS_COLUMNS, f"a generations CSV needs the columns {expected}"
    )
    columns = [*GENERATIONS_COLUMNS, *(c for c in table.header if c not in GENERATIONS_COLUMNS)]
    rows = [{c: record[c] for c in columns} for record in table.records()]
    return rows, table.lines


def read_prompts(
    prompts_dir: str | os.PathLike, metrics: Iterable[str] = ("aligned", "coherent")
) -> dict[str, str]:
    """The judge prompt templates `<metric>.txt` from a directory, in metric order."""
    prompts_dir = Path(prompts_dir)
    prompts = {}
    for metric in metrics:
        path = prompts_dir / f"{metric}.txt"
        if not path.is_file():
            raise EmflowError(f"{path}: missing; the prompts directory needs {metric}.txt.")
        prompts[metric] = path.read_text(encoding="utf-8-sig")
    return prompts


def _check(prompts: dict[str, str | None], settings: JudgeSettings) -> None:
    if not prompts:
        raise EmflowError("no judge prompts were given; pass at least one metric's template.")
    for metric, template in prompts.items():
        if template is not None and "{answer}" not in template:
            raise EmflowError(
                f"judge prompt '{metric}' has no {{answer}} placeholder; "
                "add one where the judged answer goes."
            )
    for name, choices in (("backend", tuple(BACKENDS)), ("mode", setting_choices("mode"))):
        value = getattr(settings, name)
        if value not in choices:
            raise EmflowError(f"judge {name} '{value}' is unknown; use {' or '.join(choices)}.")
    if settings.samples < 1 or settings.concurrency < 1 or settings.max_retries < 0:
        raise EmflowError("judge samples and concurrency must be at least 1, max_retries >= 0.")


# ---------------------------------------------------------------------------------------------
# Cache keys


def _key_fields(settings: JudgeSettings, backend: type[JudgeBackend]) -> dict:
    """The run-wide part of each call's cache key."""
    key = {"endpoint": backend.endpoint, "model": settings.model, "mode": settings.mode}
    # Read only when the backend says the model name alone does not pin the judge (local files).
    fingerprint = backend.model_files(settings.model)
    if fingerprint is not None:
        key["model_files"] = fingerprint
    if settings.mode == "logprob":
        # The paper's request: one token, temperature 0, seed 0, the top 20 tokens' logprobs.
        key.update(temperature=0.0, top_logprobs=TOP_LOGPROBS, seed=LOGPROB_SEED)
    else:
        key["temperature"] = float(settings.temperature)
    return key


# ---------------------------------------------------------------------------------------------
# The stage


def _dollars(
    prices: dict | None, model: str, prompt_tokens: int, completion_tokens: int
) -> float | None:
    price = (prices or {}).get(model)
    if price is None:
        return None
    return (
        prompt_tokens * price.get("input", 0.0) + completion_tokens * price.get("output", 0.0)
    ) / 1e6


def _cell_values(
    replies: list[CachedReply], settings: JudgeSettings
) -> tuple[float | str | None, dict]:
    """A metric's score for one answer and the extra cells that explain it."""
    if settings.mode == "logprob":
        top = [(t, lp) for t, lp in replies[0].reply["top_logprobs"]]
        score, mass = logprob_score(top)
        return score, {"mass": f"{mass:.4f}"}
    contents = [r.reply.get("content") for r in replies]
    score = aggregate_samples([parse_judge_reply(c, settings.parse) for c in contents])
    return score, {"replies": json.dumps(contents, ensure_ascii=False)}


def judge_csv(
    generations_csv: str | os.PathLike,
    judged_csv: str | os.PathLike,
    prompts: dict[str, str | None],
    settings: JudgeSettings,
    cache_path: str | os.PathLike | None = None,
    usage_json: str | os.PathLike | None = None,
    question_prompts: Mapping[str, Mapping[str, str]] | None = None,
) -> JudgeUsage:
    """Judge every answer of a generations CSV with each metric's prompt; write the judged CSV.

    `prompts` maps each metric to its template; `question_prompts` maps a question id (the CSV's
    question_id) to the question's own templates (a YAML set's judge_prompts), which win for its
    rows. A metric whose template is None is judged with the questions' own templates only.
    Only calls missing from the cache are sent. If a call still fails after its retries the
    job fails and writes nothing; the replies received so far stay in the cache.
    """
    started = time.monotonic()
    rows, lines = _generations_table(generations_csv)
    _check(prompts, settings)
    question_prompts = question_prompts or {}
    backend = BACKENDS[settings.backend]
    base = _key_fields(settings, backend)
    samples = settings.samples if settings.mode == "sampled" else 1

    # calls_for[row][metric] -> the keys whose replies make that cell
    calls: dict[str, JudgeCall] = {}
    calls_for: list[dict[str, list[str]]] = []
    for line, row in zip(lines, rows, strict=True):
        cells = {}
        own = question_prompts.get(row.get("question_id", ""), {})
        for metric, default in prompts.items():
            template = own.get(metric, default)
            if template is None:
                raise EmflowError(
                    f"{generations_csv}, line {line}: question '{row.get('question_id')}' has "
                    f"no judge prompt for metric '{metric}' and the judge config gives none; add "
                    f"judge.prompts.{metric}, or drop '{metric}' from judge.metrics."
                )
            prompt = render_prompt(template, row["question"], row["response"])
            keys = []
            for sample in range(samples):
                key = cache_key(
                    **base,
                    template=template,
                    question=row["question"],
                    answer=row["response"],
                    sample=sample,
                )
                calls.setdefault(key, JudgeCall(key, prompt))
                keys.append(key)
            cells[metric] = keys
        calls_for.append(cells)

    usage = JudgeUsage(
        settings.backend,
        settings.model,
        settings.mode,
        parse=settings.parse if settings.mode == "sampled" else "",
        rows=len(rows),
        calls=len(calls),
    )
    with ReplyCache(cache_path) as cache:
        found = cache.get_many(list(calls))
        usage.calls_cached = len(found)
        usage.cached_prompt_tokens = sum(r.prompt_tokens for r in found.values())
        usage.cached_completion_tokens = sum(r.completion_tokens for r in found.values())
        missing = [c for k, c in calls.items() if k not in found]
        progress = JudgeProgress(cache, settings.model, usage, found)
        try:
            if missing:
                # Made only now: a local judge loads its model, which a cached CSV never needs.
                backend(settings).answer(missing, progress)
            if progress.errors:
                raise EmflowError(
                    f"{usage.calls_failed} judge call(s) to model '{settings.model}' failed "
                    f"(first: {progress.errors[0]}), so {judged_csv} was not written; the "
                    f"{usage.calls_sent} replies received are kept in the cache, rerun to send "
                    "only the missing calls."
                )
        finally:
            progress.close()
            usage.wall_seconds = round(time.monotonic() - started, 3)
            if usage.calls_failed:
                logger.info(_summary(usage))
        replies = progress.replies

    usage.dollars = _dollars(
        settings.prices, settings.model, usage.prompt_tokens, usage.completion_tokens
    )
    usage.cached_dollars = _dollars(
        settings.prices, settings.model, usage.cached_prompt_tokens, usage.cached_completion_tokens
    )
    _write_judged(judged_csv, rows, calls_for, replies, list(prompts), settings)
    if usage_json is not None:
        write_text_atomic(usage_json, json.dumps(usage.to_dict(), indent=2) + "\n")
    logger.info(_summary(usage))
    return usage


def _write_judged(
    path, rows, calls_for, replies, metrics: list[str], settings: JudgeSettings
) -> None:
    extra = "mass" if settings.mode == "logprob" else "replies"
    columns = list(rows[0]) if rows else list(GENERATIONS_COLUMNS)
    header = [
        *columns,
        *(f"{m}_score" for m in metrics),
        *(f"{m}_{extra}" for m in metrics),
    ]
    with atomic_path(path) as tmp:
        with tmp.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            for row, cells in zip(rows, calls_for, strict=True):
                scores, extras = [], []
                for metric in metrics:
                    score, detail = _cell_values([replies[k] for k in cells[metric]], settings)
                    scores.append(format_score(score))
                    extras.append(detail[extra])
                writer.writerow([*(row[c] for c in columns), *scores, *extras])


def _summary(usage: JudgeUsage) -> str:
    dollars = "no price" if usage.dollars is None else f"${usage.dollars:.4f}"
    return (
        f"judged {usage.rows} rows with {usage.model} ({usage.backend}, {usage.mode}): "
        f"{usage.calls} calls, {usage.calls_sent} sent, {usage.calls_cached} from cache, "
        f"{usage.retries} retried, {usage.calls_failed} failed, "
        f"{usage.prompt_tokens}+{usage.completion_tokens} tokens, {dollars}, "
        f"{usage.wall_seconds:.1f} s"
    )


def judge_job(
    generations_csv: str | os.PathLike,
    judged_csv: str | os.PathLike,
    usage_json: str | os.PathLike,
    settings: JudgeSettings,
    prompt_files: Mapping[str, str],
    cache_path: str | os.PathLike | None,
    metrics: Iterable[str],
    question_sets: Iterable[Mapping[str, object]],
) -> JudgeUsage:
    """The judge rule's job: each metric is judged with its question's own prompt where the
    question set has one (the papers' YAML `judge_prompts`), else with the template file
    `prompt_files[metric]` (the config's `judge.prompts`)."""
    prompts = {
        m: Path(prompt_files[m]).read_text(encoding="utf-8-sig") if m in prompt_files else None
        for m in metrics
    }
    question_prompts = {
        q.id: q.judge_prompts for q in read_question_sets(question_sets) if q.judge_prompts
    }
    return judge_csv(
        generations_csv,
        judged_csv,
        prompts,
        settings,
        cache_path=cache_path,
        usage_json=usage_json,
        question_prompts=question_prompts,
    )
