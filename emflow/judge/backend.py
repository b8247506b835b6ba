"""What passes between the judge stage and a judge backend.

The stage hands a backend the `JudgeCall`s missing from the cache; the backend answers them in
any order and reports each reply, retry and failure to a `JudgeProgress`, which commits every
reply to the cache as it arrives and counts it in the run's `JudgeUsage`. Backends are found by
name in `emflow.judge.registry.BACKENDS`.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from typing import ClassVar, Protocol

from emflow.cache import CachedReply, ReplyCache
from emflow.judge.settings import JudgeSettings


@dataclass
class JudgeUsage:
    """What one judge_csv run cost: calls, cache hits, retries, tokens and dollars."""

    backend: str
    model: str
    mode: str
    # How sampled replies were read ("homework" or "lenient"); logprob mode reads no text.
    parse: str = ""
    rows: int = 0
    calls: int = 0  # distinct judge calls the CSV needs
    calls_cached: int = 0  # served from the cache, nothing sent
    calls_sent: int = 0  # answered by the endpoint in this run
    calls_failed: int = 0  # still failing after every retry
    retries: int = 0  # requests re-sent after a 429, 5xx, timeout or dropped connection
    prompt_tokens: int = 0  # this run's fresh calls
    completion_tokens: int = 0
    dollars: float | None = None  # this run's fresh calls; None when the model has no price
    cached_prompt_tokens: int = 0  # what the cached calls cost when they were made
    cached_completion_tokens: int = 0
    cached_dollars: float | None = None
    wall_seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class JudgeCall:
    """One question to the judge: a rendered prompt, and the cache key its reply is stored under."""

    key: str
    prompt: str


class JudgeProgress:
    """Where a backend reports: each reply is committed to the cache as it arrives, and counted."""

    def __init__(
        self, cache: ReplyCache, model: str, usage: JudgeUsage, found: dict[str, CachedReply]
    ):
        self.cache = cache
        self.model = model
        self.usage = usage
        self.replies: dict[str, CachedReply] = dict(found)  # cache key -> reply, cached or new
        self.errors: list[str] = []  # why calls failed for good, first first
        self.bar = None
        if usage.calls:
            from tqdm import tqdm

            self.bar = tqdm(total=usage.calls, initial=len(found), desc="judge", unit="call",
                            file=sys.stderr, disable=None, dynamic_ncols=True)  # fmt: skip
        self._refresh()

    def answered(
        self, call: JudgeCall, reply: dict, prompt_tokens: int, completion_tokens: int
    ) -> None:
        """`call` was answered with `reply` (stored as is) at this cost in tokens."""
        self.replies[call.key] = self.cache.put(
            call.key, reply, prompt_tokens, completion_tokens, self.model
        )
        self.usage.calls_sent += 1
        self.usage.prompt_tokens += prompt_tokens
        self.usage.completion_tokens += completion_tokens
        self._refresh(1)

    def from_another_job(self, replies: dict[str, CachedReply]) -> None:
        """Replies another job stored while this one ran: counted as cached, nothing was paid."""
        self.replies.update(replies)
        self.usage.calls_cached += len(replies)
        self.usage.cached_prompt_tokens += sum(r.prompt_tokens for r in replies.values())
        self.usage.cached_completion_tokens += sum(r.completion_tokens for r in replies.values())
        self._refresh(len(replies))

    def retried(self) -> None:
        """A call is about to be sent again."""
        self.usage.retries += 1
        self._refresh()

    def failed(self, call: JudgeCall, message: str) -> None:
        """`call` failed for good; `message` says why, free of secrets."""
        self.errors.append(message)
        self.usage.calls_failed += 1
        self._refresh()

    def close(self) -> None:
        """Close the progress bar."""
        if self.bar is not None:
            self.bar.close()

    def _refresh(self, advance: int = 0) -> None:
        if self.bar is None:
            return
        self.bar.set_postfix(
            cached=self.usage.calls_cached,
            retried=self.usage.retries,
            failed=self.usage.calls_failed,
            refresh=False,
        )
        self.bar.update(advance)


class JudgeBackend(Protocol):
    """What judge_csv asks of a backend: answer calls, telling `progress` about each one.

    It is made from the run's settings only when a call is missing from the cache, so a cached
    CSV never loads a local model or needs an API key.
    """

    # Names the backend in each call's cache key, so two backends never share a reply.
    endpoint: ClassVar[str]

    def __init__(self, settings: JudgeSettings) -> None: ...

    @staticmethod
    def model_files(model: str) -> str | None:
        """What else the cache key needs to pin the judge model (a digest of a local model's
        files), or None where its name is enough; called before any model is loaded."""

    def answer(self, calls: list[JudgeCall], progress: JudgeProgress) -> None:
        """Answer every call (or stop after a failure), reporting each to `progress`."""
