"""The openai generation backend: answers sampled from an OpenAI-compatible chat endpoint.

What is generation's own lives here (which samples one request asks for, the cache key of one
sampled answer); sending, retrying and counting is `emflow.openai_client`'s and storing is
`emflow.cache`'s. Each answer is committed as it arrives, so a rerun sends nothing already
answered and a job killed halfway keeps what it paid for; an answer another job is sending at the
same time is waited for, not paid for twice.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from emflow.cache import CachedReply, ReplyCache, cache_key, send_once
from emflow.errors import EmflowError
from emflow.generate.backend import GenerationOutput, Job, by_token_limit
from emflow.generate.settings import GenerationSettings, served_model_name
from emflow.openai_client import OpenAIClient

log = logging.getLogger("emflow.generate")

ENDPOINT = "openai-chat"  # the kind of endpoint, in every cache key
RETRY_BASE_DELAY = 0.5  # seconds; the first backoff, doubled per retry (tests shorten it)


@dataclass
class _Request:
    """One chat completion: the samples `samples` of one chat, stored under `keys`."""

    messages: list[dict[str, str]]
    samples: list[int]
    keys: list[str]


class _Progress:
    """Where the client reports: each answer is committed to the cache as it arrives."""

    def __init__(self, cache: ReplyCache, model: str, found: dict[str, CachedReply], total: int):
        self.cache = cache
        self.model = model
        self.answers: dict[str, CachedReply] = dict(found)  # cache key -> reply
        self.total = total
        self.cached = len(found)
        self.requests = 0  # answered in this run
        self.retries = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.short = 0  # replies with fewer choices than `n` asked for
        self.errors: list[str] = []  # why requests failed for good, first first
        self._logged = len(found)

    def answered(
        self, item: _Request, contents: list[str | None], prompt_tokens: int, completion_tokens: int
    ) -> None:
        """Store each choice under its sample's key; an endpoint may give fewer than asked."""
        if len(contents) < len(item.keys):
            self.short += 1
        # zip stops at the shorter: the samples left without a choice are asked for again.
        for index, (key, content) in enumerate(zip(item.keys, contents, strict=False)):
            # A request's tokens go to its first answer, so the stored tokens still add up.
            tokens = (prompt_tokens, completion_tokens) if index == 0 else (0, 0)
            self.answers[key] = self.cache.put(key, {"content": content}, *tokens, self.model)
        self.requests += 1
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        if len(self.answers) - self._logged >= max(1, self.total // 10):
            self._logged = len(self.answers)
            log.info("sampled %d / %d answers", len(self.answers), self.total)

    def from_another_job(self, replies: dict[str, CachedReply]) -> None:
        """Answers another job stored while this one ran: nothing was paid here for them."""
        self.answers.update(replies)
        self.cached += len(replies)

    def retried(self) -> None:
        self.retries += 1

    def failed(self, item: _Request, message: str) -> None:
        self.errors.append(message)


class OpenAIBackend:
    """Each output's answers from the model the endpoint serves it under (its `served_model`;
    the base model's: `served_model_name` of no run)."""

    def __init__(self, model_name: str, settings: GenerationSettings) -> None:
        self.model_name = model_name
        self.settings = settings

    def answer(self, jobs: list[Job], outputs: Sequence[GenerationOutput]) -> Iterator[list[str]]:
        for output in outputs:
            model = output.served_model or served_model_name(self.settings, self.model_name, None)
            yield by_token_limit(
                jobs,
                self.settings,
                lambda chats, group, limited, model=model: openai_responses(
                    chats, [k for _, k in group], model, limited
                ),
            )


def openai_responses(
    messages: list[list[dict[str, str]]],
    sample_indices: list[int],
    model: str,
    settings: GenerationSettings,
) -> list[str]:
    """The answer to each chat (sample `sample_indices[i]` of `messages[i]`), stripped, in order.

    Only answers missing from `settings.cache` are asked for; the samples of one chat share one
    request (`n`) when `settings.openai_n` is set.
    """
    if len(messages) != len(sample_indices):
        raise ValueError("messages and sample_indices must have one entry per answer")
    started = time.monotonic()
    run = _key_fields(model, settings)
    keys = [
        cache_key(**run, messages=chat, sample=int(k))
        for chat, k in zip(messages, sample_indices, strict=True)
    ]
    unique = list(dict.fromkeys(keys))
    total = len(unique)
    with ReplyCache(settings.cache, name="generation cache", setting="generation.cache") as cache:
        progress = _Progress(cache, model, cache.get_many(keys), total)
        client = None

        def send(claimed: list[str]) -> bool:
            """Ask for the answers this job claimed; False once a request failed for good."""
            nonlocal client
            if client is None:  # made only when something is missing: a cached rerun needs no key
                client = OpenAIClient(
                    base_url=settings.base_url or None,
                    timeout=settings.timeout,
                    max_retries=settings.max_retries,
                    concurrency=settings.concurrency,
                    retry_base_delay=RETRY_BASE_DELAY,
                    purpose="generating with the openai backend",
                )
                log.info("openai backend: %d answers from model '%s', %d cached, %d to sample",
                         total, model, progress.cached, total - progress.cached)  # fmt: skip
            elif progress.short:
                log.warning(
                    "the endpoint gave fewer choices than the n asked for; asking again for the "
                    "rest (set generation.openai_n to false if it ignores n)"
                )
            progress.short = 0
            requests = _requests(messages, sample_indices, keys, set(claimed), settings)
            client.complete_all(requests, _request_args(model, settings), _contents, progress)
            # Without errors every request got at least one choice, so each round makes progress.
            return not progress.errors

        send_once(
            cache,
            lambda: [key for key in unique if key not in progress.answers],
            send,
            progress.from_another_job,
            log,
            "answers",
        )
        if progress.errors:
            raise EmflowError(_failure(progress, model, settings))
        answers = progress.answers
    log.info(
        "openai backend: %d answers from model '%s': %d cached, %d sampled in %d requests, "
        "%d retries, %d prompt + %d completion tokens, %.1f s",
        total, model, progress.cached, total - progress.cached, progress.requests,
        progress.retries, progress.prompt_tokens, progress.completion_tokens,
        time.monotonic() - started,
    )  # fmt: skip
    # Empty or None content (an empty completion, a refusal or tool call without text) is an
    # empty answer: it was sampled and paid for, and asking again would bias the samples.
    return [(answers[key].reply.get("content") or "").strip() for key in keys]


def _key_fields(model: str, settings: GenerationSettings) -> dict:
    """The run-wide part of each answer's cache key: everything the endpoint samples from."""
    base_url = settings.base_url or os.environ.get("OPENAI_BASE_URL") or "default"
    key = {
        "endpoint": ENDPOINT,
        "base_url": base_url.rstrip("/"),
        "model": model,
        # float/int so that `temperature: 1` and `1.0` in a config ask for the same answers
        "temperature": float(settings.temperature),
        "top_p": float(settings.top_p),
        "max_tokens": int(settings.max_new_tokens),
    }
    if settings.openai_seed is not None:
        key["seed"] = int(settings.openai_seed)  # a seeded answer is another answer
    return key


def _requests(messages, sample_indices, keys, wanted: set[str], settings) -> list[_Request]:
    """The requests for the answers `wanted`: per chat, one with `n` or one per sample."""
    missing: dict[str, dict[str, int]] = {}  # chat (as JSON) -> key -> sample, of what is wanted
    chats: dict[str, list[dict[str, str]]] = {}
    for chat, sample, key in zip(messages, sample_indices, keys, strict=True):
        if key in wanted:
            text = json.dumps(chat, sort_keys=True)
            chats.setdefault(text, chat)
            missing.setdefault(text, {})[key] = int(sample)
    requests = []
    for text, samples in missing.items():
        ordered = sorted(samples.items(), key=lambda item: item[1])
        if settings.openai_n:
            keys_ = [key for key, _ in ordered]
            requests.append(_Request(chats[text], [s for _, s in ordered], keys_))
        else:
            requests += [_Request(chats[text], [s], [key]) for key, s in ordered]
    return requests


def _request_args(model: str, settings: GenerationSettings):
    """The keyword arguments of `chat.completions.create` for one request."""

    def args(request: _Request) -> dict:
        kwargs = {
            "model": model,
            "messages": request.messages,
            "temperature": settings.temperature,
            "top_p": settings.top_p,
            "max_tokens": settings.max_new_tokens,
        }
        if len(request.samples) > 1:
            kwargs["n"] = len(request.samples)
        if settings.openai_seed is not None:
            # Offset by the first sample asked for: one request per sample with one seed would
            # sample the same answer every time.
            kwargs["seed"] = settings.openai_seed + request.samples[0]
        return kwargs

    return args


def _contents(completion) -> list[str | None]:
    """The text of each choice, in choice order."""
    choices = getattr(completion, "choices", None)
    if not choices:
        raise ValueError("the reply has no choices")  # worth asking again
    ordered = sorted(choices, key=lambda choice: getattr(choice, "index", 0) or 0)
    return [getattr(choice.message, "content", None) for choice in ordered]


def _failure(progress: _Progress, model: str, settings: GenerationSettings) -> str:
    missing = progress.total - len(progress.answers)
    where = (
        f"kept in the generation cache {settings.cache}, so nothing is lost: rerunning resumes "
        f"and asks only for the {missing} missing"
        if settings.cache is not None
        else "held in memory only (generation.cache is null), so a rerun asks for all again"
    )
    return (
        f"{len(progress.errors)} request(s) to model '{model}' failed after their retries "
        f"(first: {progress.errors[0]}); {len(progress.answers)} of {progress.total} answers "
        f"are cached, {where}."
    )
