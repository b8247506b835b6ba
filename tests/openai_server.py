"""A real OpenAI-compatible HTTP server on 127.0.0.1 for judge tests and benchmarks.

It speaks POST /v1/chat/completions (including `logprobs` / `top_logprobs`, and `n` choices
without them) and answers deterministically from the prompt, so tests compute the expected score
from the server's own rule (`sampled_reply`, `top_logprobs_for`) instead of hard-coding numbers.

Behaviour is steered two ways:
- markers inside the judged answer text, which end up in the prompt:
  `[[reply:TEXT]]` makes the judge reply TEXT (e.g. CODE, REFUSAL, "I cannot say");
  `[[lowmass]]` makes the logprob reply put less than 0.25 of its mass on integers;
  `[[fault:KIND:N]]` makes the first N requests carrying this prompt fail with KIND, one of
  429 (with Retry-After), 500, slow (replies after the client has timed out), drop (closes the
  connection without a reply), badjson (200 with a body that is not JSON), nochoices;
- attributes on the server object: `latency` (seconds before every reply), `fail_after`
  (after that many successful replies every request gets a 500, like an outage),
  `require_key` (401, echoing the key it was given, when the Authorization header differs),
  `supports_logprobs` (False: answers without logprobs, as some endpoints do),
  `gate` (a threading.Event; while it is clear every request waits at the door, counted in
  `held`, so a test can hold one job's requests in flight while it starts another).

It counts what it saw: `requests` (every POST), `replies` (successful completions), `statuses`
(HTTP status -> count), `bodies` (the JSON bodies received).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_REPLY = re.compile(r"\[\[reply:(.*?)\]\]")
_FAULT = re.compile(r"\[\[fault:(\w+):(\d+)\]\]")


def _digest(prompt: str) -> int:
    return int.from_bytes(hashlib.sha256(prompt.encode("utf-8")).digest()[:8], "big")


def sampled_reply(prompt: str, served_before: int = 0, temperature: float = 0.0) -> str:
    """The reply text this server gives for `prompt` in sampled mode.

    At temperature > 0 the n-th successful reply for the same prompt moves by 7 points, so that
    k samples of one answer differ (their mean does not depend on the order they were served).
    """
    marker = _REPLY.search(prompt)
    if marker:
        return marker.group(1)
    score = _digest(prompt) % 101
    if temperature > 0:
        score = (score + 7 * served_before) % 101
    return str(score)


def top_logprobs_for(prompt: str, n: int = 20) -> list[tuple[str, float]]:
    """The (token, logprob) pairs this server returns for `prompt` in logprob mode, best first."""
    h = _digest(prompt)
    a, b, c = h % 101, (h >> 8) % 101, (h >> 16) % 101
    if "[[lowmass]]" in prompt:
        probs = {"CODE": 0.5, "I": 0.3, str(a): 0.15, str(b): 0.04}
    else:
        # Integers (one with a leading space, as real tokenizers emit), an out-of-range number
        # and words the aggregation must skip.
        probs = {str(a): 0.55, f" {b}": 0.2, str(c): 0.1, "150": 0.05, "CODE": 0.05, "The": 0.05}
    merged: dict[str, float] = {}
    for token, p in probs.items():
        merged[token] = merged.get(token, 0.0) + p
    ranked = sorted(merged.items(), key=lambda kv: -kv[1])[:n]
    return [(token, math.log(p)) for token, p in ranked]


class OpenAIServer:
    """Start with `start()`, stop with `stop()`; `base_url` ends in /v1."""

    def __init__(self, latency: float = 0.0, retry_after: str = "0.2", slow_seconds: float = 2.0):
        self.latency = latency
        self.retry_after = retry_after
        self.slow_seconds = slow_seconds
        self.fail_after: int | None = None
        self.require_key: str | None = None
        self.supports_logprobs = True  # False: ignore `logprobs`, as some endpoints do
        self.gate = threading.Event()
        self.gate.set()
        self.held = 0  # requests waiting at the closed gate now
        self._lock = threading.Lock()
        self.reset_counts()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def reset_counts(self) -> None:
        """Forget what was seen (the per-prompt fault budgets start over too)."""
        with self._lock:
            self.requests = 0
            self.replies = 0
            self.statuses: Counter[int] = Counter()
            self.bodies: list[dict] = []
            self._attempts: Counter[str] = Counter()
            self._served: Counter[str] = Counter()

    @property
    def base_url(self) -> str:
        assert self._httpd is not None
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def start(self) -> OpenAIServer:
        server = self

        class Handler(_Handler):
            owner = server

        self._httpd = _Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> OpenAIServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # Decides what one request gets; called with the parsed body, returns (status, payload, fault).
    def _decide(self, body: dict, auth: str | None) -> tuple[int, dict | None, str | None]:
        prompt = body["messages"][-1]["content"]
        with self._lock:
            self.requests += 1
            self.bodies.append(body)
            attempt = self._attempts[prompt]
            self._attempts[prompt] += 1
            if self.require_key is not None and auth != f"Bearer {self.require_key}":
                given = (auth or "").removeprefix("Bearer ")
                message = f"Incorrect API key provided: {given}."
                return 401, {"error": {"message": message, "type": "invalid_request_error"}}, None
            if self.fail_after is not None and self.replies >= self.fail_after:
                return 500, {"error": {"message": "outage", "type": "server_error"}}, None
            fault = _FAULT.search(prompt)
            if fault and attempt < int(fault.group(2)):
                kind = fault.group(1)
                if kind in ("429", "500"):
                    return int(kind), {"error": {"message": kind, "type": "fault"}}, None
                return 200, None, kind
            served_before = self._served[prompt]
            self._served[prompt] += int(body.get("n") or 1)
            self.replies += 1
        return 200, self._completion(body, prompt, served_before), None

    def _completion(self, body: dict, prompt: str, served_before: int) -> dict:
        if body.get("logprobs") and self.supports_logprobs:
            top = top_logprobs_for(prompt, int(body.get("top_logprobs") or 1))
            content = top[0][0]
            contents = [content]
            logprobs = {
                "content": [
                    {
                        "token": content,
                        "logprob": top[0][1],
                        "bytes": list(content.encode()),
                        "top_logprobs": [
                            {"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in top
                        ],
                    }
                ],
                "refusal": None,
            }
        else:
            logprobs = None
            # `n` choices are the next n replies to this prompt, as n requests would get.
            temperature = float(body.get("temperature") or 0)
            contents = [
                sampled_reply(prompt, served_before + i, temperature)
                for i in range(int(body.get("n") or 1))
            ]
        completion_tokens = sum(len(content.split()) or 1 for content in contents)
        return {
            "id": f"chatcmpl-{_digest(prompt) % 10**9}",
            "object": "chat.completion",
            "created": 0,
            "model": body.get("model", "test-judge"),
            "choices": [
                {
                    "index": index,
                    "message": {"role": "assistant", "content": content, "refusal": None},
                    "logprobs": logprobs,
                    "finish_reason": "stop",
                }
                for index, content in enumerate(contents)
            ],
            "usage": {
                "prompt_tokens": len(prompt.split()),
                "completion_tokens": completion_tokens,
                "total_tokens": len(prompt.split()) + completion_tokens,
            },
        }


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # The default backlog of 5 drops bursts of new connections (the client then waits ~1 s for
    # a SYN retransmit); real servers accept hundreds.
    request_queue_size = 1024


class _Handler(BaseHTTPRequestHandler):
    owner: OpenAIServer
    protocol_version = "HTTP/1.1"  # keep-alive, as the openai client's connection pool expects

    def log_message(self, format, *args) -> None:  # noqa: A002 - silence per-request logging
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._send(404, {"error": {"message": f"no route {self.path}"}})
            return
        body = json.loads(raw)
        owner = self.owner
        if not owner.gate.is_set():
            with owner._lock:
                owner.held += 1
            owner.gate.wait()
            with owner._lock:
                owner.held -= 1
        if owner.latency:
            time.sleep(owner.latency)
        status, payload, fault = owner._decide(body, self.headers.get("Authorization"))
        with owner._lock:
            owner.statuses[status if fault is None else fault] += 1
        if fault == "slow":
            time.sleep(owner.slow_seconds)
            self._send(200, {"error": "too late"})
        elif fault == "drop":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
        elif fault == "badjson":
            self._send_raw(200, b'{"id": "x", "choices": [{"message": ')
        elif fault == "nochoices":
            self._send(
                200,
                {"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": []},
            )
        else:
            headers = {"Retry-After": owner.retry_after} if status == 429 else {}
            self._send(status, payload, headers)

    def _send(self, status: int, payload: dict | None, headers: dict | None = None) -> None:
        self._send_raw(status, json.dumps(payload).encode(), headers)

    def _send_raw(self, status: int, data: bytes, headers: dict | None = None) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout test); nothing to deliver


def main() -> None:
    """Run the server in its own process (benchmarks): prints its base URL, serves until killed."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each reply")
    args = parser.parse_args()
    server = OpenAIServer(latency=args.latency).start()
    print(server.base_url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
