"""Next-token choice with transformers' semantics, on the device: the fast generation backend's
sampling (TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper, then one multinomial draw
per row), written so that a CUDA graph can hold it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sampling:
    """Next-token choice as transformers' `generate` makes it.

    temperature 0 is greedy (argmax); otherwise TemperatureLogitsWarper (skipped at 1.0),
    TopKLogitsWarper (skipped for None or 0), TopPLogitsWarper (skipped at 1.0), in that order.
    Note that `generate(do_sample=True)` applies top_k=50 unless the model's generation config
    or the call says otherwise: pass top_k=50 to reproduce it, None for plain sampling.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 or None, got {self.top_k}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


# --- sampling: transformers' logits warpers, on the device --------------------------------------


def top_k_filter(scores, top_k: int, min_tokens_to_keep: int = 1):
    """TopKLogitsWarper: -inf for every score below the k-th largest."""
    import torch

    k = min(max(top_k, min_tokens_to_keep), scores.size(-1))
    kth = torch.topk(scores, k)[0][..., -1, None]
    return scores.masked_fill(scores < kth, -float("inf"))


def top_p_filter(scores, top_p: float, min_tokens_to_keep: int = 1):
    """TopPLogitsWarper: -inf for the smallest scores whose probabilities sum to <= 1 - top_p.

    The same operations as transformers (ascending sort, cumulative softmax, scatter back), so
    the kept set is the same up to the sort's order among equal scores.
    """
    sorted_scores, sorted_indices = scores.sort(descending=False)
    cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = cumulative <= (1 - top_p)
    remove_sorted[..., -min_tokens_to_keep:] = False
    remove = remove_sorted.scatter(-1, sorted_indices, remove_sorted)
    return scores.masked_fill(remove, -float("inf"))


def warp_scores(logits, sampling: Sampling):
    """Float32 logits -> the scores `generate` samples from (its `output_scores`)."""
    scores = logits
    if sampling.temperature != 1.0:
        scores = scores / sampling.temperature
    if sampling.top_k:
        scores = top_k_filter(scores, sampling.top_k)
    if sampling.top_p < 1.0:
        scores = top_p_filter(scores, sampling.top_p)
    return scores


def sample_one(probs, generator):
    """One draw per row, exactly as `torch.multinomial(probs, 1, generator=generator)`.

    torch computes a single sample as argmax(probs / q) with q ~ Exp(1) from the same generator;
    written out here because torch.multinomial first checks the probabilities on the host, which
    a CUDA graph cannot contain.
    """
    import torch

    noise = torch.empty_like(probs).exponential_(1, generator=generator)
    return torch.argmax(probs / noise, dim=-1)


def pick_tokens(logits, sampling: Sampling, generator):
    """The next token of every row from its float32 logits."""
    import torch

    if sampling.greedy:
        return torch.argmax(logits, dim=-1)
    probs = torch.softmax(warp_scores(logits, sampling), dim=-1)
    return sample_one(probs, generator)
