"""The openai judge backend: each judge call is one chat completion from an OpenAI-compatible API.

What is the judge's own lives here (the request for sampled or logprob mode, and which part of a
completion is stored as the reply); sending, retrying and counting is `emflow.openai_client`'s.
"""

from __future__ import annotations

from emflow.errors import EmflowError
from emflow.judge import LOGPROB_SEED, TOP_LOGPROBS, JudgeSettings
from emflow.judge_backend import JudgeCall, JudgeProgress
from emflow.openai_client import OpenAIClient


class OpenAIJudge:
    """Answers judge calls with `settings.model` at `settings.base_url` (see JudgeBackend)."""

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
        """Ask every call concurrently; each reply, retry and failure goes to `progress`."""
        self.client.complete_all(calls, self._request, self._reply, progress)

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
