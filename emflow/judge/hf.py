"""The hf judge backend: a local transformers causal LM scored exactly on every reply it may give.

Sampled mode: instead of sampling text, it computes the probability of each candidate reply
("0" ... "100", "CODE", "REFUSAL") as a complete assistant turn (the reply's tokens, then the
end-of-turn token), so multi-token numbers are exact whatever the tokenizer does with digits, and
draws a candidate from those probabilities with an RNG seeded by the call's cache key.

Logprob mode: what the paper's judge gets from the API, the 20 most likely first tokens of the
reply with their log-probabilities under the whole next-token distribution, so that the 0.25 rule
of `logprob_score` weighs the integer tokens against everything else the judge might say.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import random
from pathlib import Path

from emflow.errors import EmflowError
from emflow.judge.backend import JudgeCall, JudgeProgress
from emflow.judge.settings import LABELS, TOP_LOGPROBS, JudgeSettings

CANDIDATES: tuple[str, ...] = tuple(str(i) for i in range(101)) + LABELS

# Llama 3 templates write today's date into the prompt; a pinned date keeps the judge's
# prompt, and therefore its scores, the same on every day. Templates without it ignore it.
CHAT_TEMPLATE_KWARGS = {"date_string": "26 Jul 2024"}


# Below this many parameters a CPU judge runs on one thread (see CandidateScorer._threads).
SINGLE_THREAD_PARAMETERS = 20_000_000


class HFJudge:
    """Answers judge calls with the local model `settings.model` (see JudgeBackend)."""

    endpoint = "hf"

    @staticmethod
    def model_files(model: str) -> str:
        """A digest of the model's files: new weights under the same path are a new judge."""
        return model_fingerprint(model)

    def __init__(self, settings: JudgeSettings):
        self.settings = settings
        self.scorer = CandidateScorer(settings.model)

    def answer(self, calls: list[JudgeCall], progress: JudgeProgress) -> None:
        """Score every call in turn; each reply goes to `progress` as it is made."""
        distributions: dict[str, tuple[list[float], int]] = {}  # k samples share one forward pass
        for call in calls:
            if self.settings.mode == "logprob":
                top, prompt_tokens = self.scorer.top_logprobs(call.prompt, TOP_LOGPROBS)
                # The openai backend's shape: the likeliest token as the reply's one token.
                reply = {"content": top[0][0], "top_logprobs": [[t, lp] for t, lp in top]}
                progress.answered(call, reply, prompt_tokens, 1)
                continue
            if call.prompt not in distributions:
                distributions[call.prompt] = self.scorer.logprobs(call.prompt)
            logprobs, prompt_tokens = distributions[call.prompt]
            reply, completion_tokens = self._reply(call, logprobs)
            progress.answered(call, reply, prompt_tokens, completion_tokens)

    def _reply(self, call: JudgeCall, logprobs: list[float]) -> tuple[dict, int]:
        """A sampled reply, in the openai backend's shape, and the tokens its text takes."""
        candidates = self.scorer.candidates
        content = draw(candidates, normalized(logprobs, self.settings.temperature), call.key)
        return {"content": content}, len(self.scorer.continuations[candidates.index(content)])


def model_fingerprint(model: str) -> str:
    """A digest of a local model directory's files (or the hub id itself), for cache keys."""
    path = Path(model).expanduser()
    if not path.is_dir():
        return f"hub:{model}"
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode())
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return f"dir:{digest.hexdigest()}"


class CandidateScorer:
    """Log-probabilities of each candidate reply to a user prompt under a causal LM."""

    def __init__(self, model: str, candidates: tuple[str, ...] = CANDIDATES):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self._torch = torch
        self.candidates = candidates
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model)
            self.model = AutoModelForCausalLM.from_pretrained(
                model, dtype="auto" if self.device == "cuda" else torch.float32
            ).to(self.device)
        except (OSError, ValueError) as exc:
            raise EmflowError(
                f"judge model '{model}' could not be loaded ({exc}); pass a local model "
                "directory or hub id that AutoModelForCausalLM.from_pretrained can load."
            ) from exc
        self.model.eval()
        if not self.tokenizer.chat_template:
            raise EmflowError(
                f"judge model '{model}': its tokenizer has no chat template; "
                "use a chat model or save one with tokenizer.chat_template set."
            )
        self.continuations = [self._continuation_ids(c) for c in candidates]
        self._build_tree()

    def _chat(self, messages: list[dict], add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            messages,
            add_generation_prompt=add_generation_prompt,
            tokenize=False,
            **CHAT_TEMPLATE_KWARGS,
        )

    def _continuation_ids(self, candidate: str) -> list[int]:
        """Token ids of `candidate` as a finished assistant turn, as the template ends it."""
        user = [{"role": "user", "content": "?"}]
        prompt = self._chat(user, add_generation_prompt=True)
        full = self._chat(user + [{"role": "assistant", "content": candidate}], False)
        eos = self.tokenizer.eos_token or ""
        text = candidate + eos
        if full.startswith(prompt) and candidate in full[len(prompt) :]:
            tail = full[len(prompt) :]
            end = tail.index(candidate) + len(candidate)
            # Stop right after the first special token that closes the turn: generation ends
            # there, so whatever the template writes after it (newlines) is never sampled.
            rest = tail[end:]
            closers = [
                rest.index(t) + len(t) for t in self.tokenizer.all_special_tokens if t in rest
            ]
            if closers:
                text = tail[: end + min(closers)]
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise EmflowError(f"the judge tokenizer turns candidate '{candidate}' into no tokens.")
        return ids

    def prompt_ids(self, user_prompt: str) -> list[int]:
        """Token ids of the chat-formatted judge prompt, ending with the assistant header."""
        text = self._chat([{"role": "user", "content": user_prompt}], add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def top_logprobs(self, user_prompt: str, k: int) -> tuple[list[tuple[str, float]], int]:
        """The `k` likeliest first tokens of the reply as (text, log-probability) under the whole
        next-token distribution, likeliest first, and the prompt's length."""
        torch = self._torch
        ids = self.prompt_ids(user_prompt)
        with torch.no_grad(), self._threads():
            logits = self.model(torch.tensor([ids], device=self.device), logits_to_keep=1).logits
            first = torch.log_softmax(logits[0, -1].float(), dim=-1)
            values, tokens = torch.topk(first, min(k, first.numel()))
        top = [
            (self.tokenizer.decode([token]), float(value))
            for token, value in zip(tokens.tolist(), values.tolist(), strict=True)
        ]
        return top, len(ids)

    def logprobs(self, user_prompt: str) -> tuple[list[float], int]:
        """Each candidate's exact log-probability as the whole reply, and the prompt's length.

        One forward pass over the prompt, then one over a token tree of all candidates: each
        distinct candidate prefix is one token that attends to the prompt's KV cache and to its
        own ancestors only, so no candidate sees another and the cache is never copied.
        """
        torch = self._torch
        ids = self.prompt_ids(user_prompt)
        with torch.no_grad(), self._threads():
            out = self.model(
                torch.tensor([ids], device=self.device), use_cache=True, logits_to_keep=1
            )
            first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
            totals = [float(first[c[0]]) for c in self.continuations]
            if self._tree_tokens:
                logp = self._tree_logprobs(out.past_key_values, len(ids))
                for i, cand in enumerate(self.continuations):
                    for depth in range(1, len(cand)):
                        node = self._tree_index[tuple(cand[:depth])]
                        totals[i] += float(logp[node, cand[depth]])
        return totals, len(ids)

    @contextlib.contextmanager
    def _threads(self):
        """Run a small model on one CPU thread, restoring torch's setting afterwards.

        A toy model gains nothing from intra-op threads, and OpenMP workers that spin-wait lose
        badly when other jobs share the cores (measured: 0.2 s vs 0.5-2.4 s per call on 2 busy
        cores).
        """
        torch = self._torch
        small = self.device == "cpu" and self.model.num_parameters() < SINGLE_THREAD_PARAMETERS
        previous = torch.get_num_threads()
        if small:
            torch.set_num_threads(1)
        try:
            yield
        finally:
            if small:
                torch.set_num_threads(previous)

    def _build_tree(self) -> None:
        """Index every proper prefix of every continuation (the tree the second pass runs)."""
        index: dict[tuple[int, ...], int] = {}
        for cand in self.continuations:
            for depth in range(1, len(cand)):
                index.setdefault(tuple(cand[:depth]), len(index))
        self._tree_index = index
        self._tree_tokens = [prefix[-1] for prefix in index]
        self._tree_depths = [len(prefix) - 1 for prefix in index]
        # ancestors[n] = the tree nodes node n may attend to (itself and its prefixes)
        self._tree_ancestors = [
            [index[prefix[:k]] for k in range(1, len(prefix) + 1)] for prefix in index
        ]

    def _tree_logprobs(self, prompt_cache, prompt_len: int):
        torch = self._torch
        n = len(self._tree_tokens)
        dtype = self.model.dtype
        allowed = torch.zeros(n, prompt_len + n, dtype=torch.bool, device=self.device)
        allowed[:, :prompt_len] = True
        for node, ancestors in enumerate(self._tree_ancestors):
            allowed[node, [prompt_len + a for a in ancestors]] = True
        # An additive float mask works with both the sdpa and the eager attention kernels.
        mask = torch.zeros(1, 1, n, prompt_len + n, dtype=dtype, device=self.device)
        mask.masked_fill_(~allowed, torch.finfo(dtype).min)
        positions = torch.tensor([[prompt_len + d for d in self._tree_depths]], device=self.device)
        logits = self.model(
            torch.tensor([self._tree_tokens], device=self.device),
            attention_mask=mask,
            position_ids=positions,
            past_key_values=prompt_cache,
            use_cache=True,
        ).logits
        return torch.log_softmax(logits[0].float(), dim=-1)


def normalized(logprobs: list[float], temperature: float = 1.0) -> list[float]:
    """Probabilities over the candidates alone, sharpened or flattened by `temperature`."""
    if temperature <= 0:
        best = max(range(len(logprobs)), key=logprobs.__getitem__)
        return [1.0 if i == best else 0.0 for i in range(len(logprobs))]
    scaled = [lp / temperature for lp in logprobs]
    top = max(scaled)
    weights = [math.exp(s - top) for s in scaled]
    total = sum(weights)
    return [w / total for w in weights]


def draw(candidates: tuple[str, ...], probs: list[float], seed_hex: str) -> str:
    """One candidate drawn from `probs` with an RNG seeded from `seed_hex` (a cache key)."""
    rng = random.Random(int(seed_hex[:16], 16))
    return rng.choices(candidates, weights=probs, k=1)[0]
