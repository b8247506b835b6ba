"""Many chat-completion requests to one OpenAI-compatible endpoint, sent concurrently with retries.

Generic over what is asked: the caller gives each item's request (the keyword arguments of
`chat.completions.create`) and a function that turns a completion into the item's result; this
module sends them `concurrency` at a time, retries what may succeed later (429, 408, 409, 5xx,
timeouts, dropped connections, malformed replies) with exponential backoff and jitter, honours
Retry-After and retry-after-ms, keeps the API key out of every message, and reports each result,
retry and failure to an events object. It retries itself (the openai client's own retries are
off) so that it can count retries, make one 429 pause every worker, and stop cleanly.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from emflow.errors import EmflowError

logger = logging.getLogger("emflow.openai_client")

Item = TypeVar("Item")
Result = TypeVar("Result")
MAX_BACKOFF = 30.0  # seconds; the exponential backoff stops growing here
MAX_RETRY_AFTER = 600.0  # seconds; a longer Retry-After is ignored in favour of the backoff
MAX_MESSAGE = 300  # characters of an error message kept for the user


class RequestEvents(Protocol[Item, Result]):
    """What the client reports while it works (always from the event loop's one thread)."""

    def answered(
        self, item: Item, result: Result, prompt_tokens: int, completion_tokens: int
    ) -> None:
        """`item` was answered; `result` is what `parse` made of the completion."""

    def retried(self) -> None:
        """A request is about to be sent again."""

    def failed(self, item: Item, message: str) -> None:
        """`item` still failed after its retries; `message` holds no API key."""


def _unusable(key: str) -> str | None:
    """What makes `key` unusable in an Authorization header (httpx would fail every request with
    it as a connection error, or the endpoint refuse it), named without showing the key."""
    names = {"\r": "a carriage return (\\r)", "\n": "a line feed (\\n)", "\t": "a tab (\\t)"}
    for char in key:
        if char in names:
            return names[char]
        if not char.isascii():
            return "a non-ASCII character"
        if not char.isprintable():
            return f"the control character U+{ord(char):04X}"
    return "a space at its start or end" if key != key.strip() else None


class _RequestFailed(Exception):
    """A request that still failed after its retries (message already free of secrets)."""


class OpenAIClient:
    """Sends chat-completion requests to one endpoint; reads OPENAI_API_KEY when it is made.

    `purpose` ends the error for a missing key ("... before judging with the openai backend").
    """

    def __init__(
        self,
        *,
        base_url: str | None,
        timeout: float,
        max_retries: int,
        concurrency: int,
        retry_base_delay: float,
        purpose: str,
    ):
        import openai

        self.openai = openai
        self.base_url = base_url  # None: OPENAI_BASE_URL, else OpenAI's own
        self.timeout = timeout  # seconds per request
        self.max_retries = max_retries
        self.concurrency = concurrency
        self.retry_base_delay = retry_base_delay  # the first backoff; doubles per retry
        self.api_key = os.environ.get("OPENAI_API_KEY") or ""
        if not self.api_key:
            raise EmflowError(
                "OPENAI_API_KEY is not set; export it (any value works for a local server "
                f"that needs no key) before {purpose}."
            )
        if unusable := _unusable(self.api_key):
            # Said before any request: each would fail and be retried as a connection error. The
            # usual cause is the line ending of a key file written on Windows.
            raise EmflowError(
                f"OPENAI_API_KEY contains {unusable}; strip it (for a key file with Windows line "
                "endings: export OPENAI_API_KEY=$(tr -d '\\r\\n' < keyfile)) before "
                f"{purpose}."
            )

    def complete_all(
        self,
        items: Sequence[Item],
        request: Callable[[Item], dict[str, Any]],
        parse: Callable[[Any], Result],
        events: RequestEvents[Item, Result],
    ) -> None:
        """Ask `request(item)` for every item and report each outcome to `events`.

        `parse` may raise ValueError for a reply worth asking again, or EmflowError for one that
        every request would get (e.g. no logprobs): that stops the run and is raised. After the
        first request that fails for good, no new request is sent; the ones in flight finish.
        """
        asyncio.run(self._complete_all(list(items), request, parse, events))

    async def _complete_all(self, items, request, parse, events) -> None:
        # The state of one run, shared by its workers (all on this event loop's thread).
        self._resume_at = 0.0  # monotonic time before which nobody sends (after a 429)
        self._stop = False
        self._client = self.openai.AsyncOpenAI(
            api_key=self.api_key, base_url=self.base_url, timeout=self.timeout, max_retries=0
        )
        semaphore = asyncio.Semaphore(self.concurrency)
        try:
            results = await asyncio.gather(
                *(self._worker(item, request, parse, events, semaphore) for item in items),
                return_exceptions=True,
            )
        finally:
            await self._client.close()
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _worker(self, item, request, parse, events, semaphore) -> None:
        async with semaphore:
            if self._stop:
                return  # the run has failed already: send no new requests, keep what arrived
            try:
                result, prompt_tokens, completion_tokens = await self._ask(
                    request(item), parse, events
                )
            except EmflowError:
                self._stop = True  # e.g. an endpoint without logprobs: every request would fail
                raise
            except _RequestFailed as exc:
                self._stop = True
                events.failed(item, str(exc))
                return
            events.answered(item, result, prompt_tokens, completion_tokens)

    async def _ask(self, kwargs: dict, parse, events) -> tuple[Any, int, int]:
        attempt = 0
        while True:
            pause = self._resume_at - time.monotonic()
            if pause > 0:
                await asyncio.sleep(pause)
            try:
                completion = await asyncio.wait_for(
                    self._client.chat.completions.create(**kwargs), timeout=self.timeout
                )
                result = parse(completion)
                usage = completion.usage
                return (
                    result,
                    getattr(usage, "prompt_tokens", 0) or 0,
                    getattr(usage, "completion_tokens", 0) or 0,
                )
            except EmflowError:
                raise
            except Exception as exc:  # classified below; unknown errors are re-raised
                if not self._retryable(exc):
                    openai = self.openai
                    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
                        # Every other request would be refused alike: stop, and say why.
                        raise EmflowError(
                            f"the endpoint refused the API key ({self._describe(exc)}); check "
                            "OPENAI_API_KEY, and OPENAI_BASE_URL or the base_url setting. "
                            "Nothing was retried; every reply received so far is kept."
                        ) from None
                    if isinstance(exc, openai.APIStatusError):
                        raise _RequestFailed(
                            f"{self._describe(exc)}, not retried: the endpoint rejected the "
                            "request itself"
                        ) from None
                    raise
                if attempt >= self.max_retries or self._stop:
                    raise _RequestFailed(
                        f"{self._describe(exc)}, still failing after {attempt} retries"
                    ) from None
                delay = self._retry_delay(attempt, exc)
                if isinstance(exc, self.openai.RateLimitError):
                    # Back-pressure: a 429 pauses every worker, not only this one.
                    self._resume_at = max(self._resume_at, time.monotonic() + delay)
                attempt += 1
                events.retried()
                logger.debug("retry %d in %.2fs after %s", attempt, delay, type(exc).__name__)
                await asyncio.sleep(delay)

    def _retryable(self, exc: Exception) -> bool:
        openai = self.openai
        if isinstance(exc, (openai.APIConnectionError, asyncio.TimeoutError, ValueError)):
            return True  # timeouts, dropped connections, malformed bodies
        if isinstance(exc, openai.APIStatusError):
            return exc.status_code in (408, 409, 429) or exc.status_code >= 500
        return False

    def _retry_delay(self, attempt: int, exc: Exception) -> float:
        response = getattr(exc, "response", None)
        headers = getattr(response, "headers", None) or {}
        for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
            try:
                value = float(headers.get(name)) * scale
            except (TypeError, ValueError):
                continue
            if 0 <= value <= MAX_RETRY_AFTER:
                return value
        backoff = min(MAX_BACKOFF, self.retry_base_delay * 2**attempt)
        return backoff / 2 + random.uniform(0, backoff / 2)  # jitter spreads synchronized retries

    def _describe(self, exc: Exception) -> str:
        if isinstance(exc, self.openai.APIStatusError):
            return self._scrub(f"HTTP {exc.status_code} {type(exc).__name__}: {exc.message}")
        return self._scrub(f"{type(exc).__name__}: {exc}")

    def _scrub(self, text: str) -> str:
        text = text.replace(self.api_key, "***") if self.api_key else text
        return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE] + "..."
