"""The openai judge backend: each judge call is one chat completion from an OpenAI-compatible API.

What is the judge's own lives here (the request for sampled or logprob mode, and which part of a
completion is stored as the reply); sending, retrying and counting is `emflow.openai_client`'s,
and making sure two jobs never pay for the same call is `emflow.cache.send_once`'s.
"""

from __future__ import annotations

import logging

from emflow.cache import send_once
from emflow.errors import EmflowError
from emflow.judge.backend import JudgeCall, JudgeProgress
from emflow.judge.settings import LOGPROB_SEED, TOP_LOGPROBS, JudgeSettings
from emflow.openai_client import OpenAIClient

logger = logging.getLogger("emflow.judge")


class OpenAIJudge:
    """Answers judge calls with `settings.model` at `settings.base_url` (see JudgeBackend)."""

    endpoint = "openai-chat-completions"

    @staticmethod
    def model_files(model: str) -> None:
        """None: the endpoint's model name is all the cache key can know of its weights."""
        return None

    def __init__(self, settings: JudgeSettings):
        self.settings = settings
        self.client = OpenAIClient(
            base_url=settings.base_url or None,
            timeout=settings.timeout,
            max_retries=settings.max_retries,
            concurrency=settings.concurrency,
            retry_base_delay=settings.retry_base_delay,
            purpose="judging with the openai backend",
        )

    def answer(self, calls: list[JudgeCall], progress: JudgeProgress) -> None:
        """Ask every call concurrently; each reply, retry and failure goes to `progress`.

        A call another job is sending at the same time (a judge job of a run that gave the same
        answer) is waited for instead, and counted as cached.
        """
        by_key = {call.key: call for call in calls}

        def send(keys: list[str]) -> bool:
            claimed = [by_key[key] for key in keys]
            self.client.complete_all(claimed, self._request, self._reply, progress)
            return not progress.errors

        send_once(
            progress.cache,
            lambda: [key for key in by_key if key not in progress.replies],
            send,
            progress.from_another_job,
            logger,
            "calls",
        )

    def _request(self, call: JudgeCall) -> dict:
        args = {
            "model": self.settings.model,
            "messages": [{"role": "user", "content": call.prompt}],
        }
        if self.settings.mode == "logprob":
            # The paper's judge request (em_organism_dir/eval/util/judge_azure.py).
            args.update(
                max_tokens=1,
                temperature=0,
                logprobs=True,
                top_logprobs=TOP_LOGPROBS,
                seed=LOGPROB_SEED,
            )
        else:
            args["temperature"] = self.settings.temperature
        return args

    def _reply(self, completion) -> dict:
        """The part of a completion the scores are made from."""
        if not getattr(completion, "choices", None):
            raise ValueError("the reply has no choices")  # worth asking again
        choice = completion.choices[0]
        reply: dict = {"content": choice.message.content}
        if self.settings.mode == "logprob":
            content = getattr(choice.logprobs, "content", None)
            if not content:
                raise EmflowError(
                    f"the judge endpoint returned no logprobs for model '{self.settings.model}'; "
                    "use mode sampled or an endpoint and model that support logprobs."
                )
            reply["top_logprobs"] = [[t.token, t.logprob] for t in content[0].top_logprobs]
        return reply
