"""Next-token choice with transformers' semantics, on the device: the fast generation backend's
sampling (TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper, then one multinomial draw
per row), written so that a CUDA graph can hold it.

Two paths. `pick_tokens` warps the whole vocabulary, as transformers does. `pick_candidates`
first takes each row's `candidate_width` largest logits and does everything else on those: with
top-k set, the vocabulary-wide float conversion, mask, softmax, noise and argmax (~3 ms of a
~20 ms step at 1000 rows of Llama-3.2's 128256 tokens) shrink to one topk and [B, width] work.
It is exact, not an approximation: where a row's `overflow` is False, the tokens it keeps and
their probabilities are the full path's (up to float rounding of the softmax sums, and the sort's
order among equal scores at the top-p boundary, as for the full path itself); where it is True
the caller reruns the batch with `pick_tokens`. What differs is the random stream: the noise has
shape [B, width] rather than [B, V], so for the same seed the two paths draw different tokens
from the same distribution.
"""

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
    """The next token of every row from its logits [B, V] (any float dtype; warped in float32)."""
    import torch

    logits = logits.float()
    if sampling.greedy:
        return torch.argmax(logits, dim=-1)
    probs = torch.softmax(warp_scores(logits, sampling), dim=-1)
    return sample_one(probs, generator)


# --- sampling over each row's largest logits only -----------------------------------------------

# Candidates beyond top_k, so that a tie group at the k-th score usually fits (no fallback).
CANDIDATE_MARGIN = 64
# Above this top_k the candidates cost about what the full vocabulary does.
CANDIDATE_LIMIT = 1024


def candidate_width(sampling: Sampling) -> int | None:
    """How many candidates `pick_candidates` takes per row, or None where it does not apply
    (greedy, no top-k, or a top-k above CANDIDATE_LIMIT): then use `pick_tokens`."""
    if sampling.greedy or not sampling.top_k or sampling.top_k > CANDIDATE_LIMIT:
        return None
    return sampling.top_k + CANDIDATE_MARGIN


def candidate_probs(logits, sampling: Sampling, width: int):
    """The warped probabilities over each row's `width` largest logits.

    logits [B, V] in any float dtype. Returns probs [B, w] (float32), indices [B, w] (int64, the
    token ids) and overflow [B] (bool), w = min(width, V). Where overflow is False, scattering
    probs to indices gives softmax(warp_scores(logits.float(), sampling)).

    Why overflow is exact. Let f(x) = float(x) / temperature, the full path's scores; f is
    monotone but not strictly (the conversion from float64, and the division, can round distinct
    logits to one score), so the order statistics commute with it: the k-th largest score is f
    of the k-th largest logit, i.e. the k-th candidate's score. A token outside the candidates
    has a logit <= the last candidate's, hence a score <= the last candidate's score s_last.
    If s_last < kth, every such token is below the k-th score and TopK removes it: the kept set
    is inside the candidates and equals the full path's, and so do its probabilities, since the
    removed tokens add exactly zero to the softmax and the top-p cumulative sums. If
    s_last >= kth, a token outside may tie the k-th score, hence overflow. Comparing raw logits
    instead would miss ties that the scaling creates, so the comparison is on scaled scores.
    """
    import torch

    if not sampling.top_k or sampling.greedy:
        raise ValueError(f"candidate sampling needs top_k and temperature > 0, got {sampling}")
    vocab = logits.size(-1)
    k = min(max(sampling.top_k, 1), vocab)  # TopKLogitsWarper's min_tokens_to_keep=1
    width = min(width, vocab)
    if width < k:
        raise ValueError(f"candidate width {width} is below top_k {k}")
    # topk on the raw dtype: the float conversion is monotone, so the order is float32's.
    values, indices = torch.topk(logits, width)
    scores = values.float()
    if sampling.temperature != 1.0:
        scores = scores / sampling.temperature  # the very operation warp_scores applies
    kth = scores[..., k - 1 : k]  # sorted descending, and f preserves that order
    if width < vocab:
        overflow = scores[..., -1] >= kth[..., 0]
    else:
        overflow = torch.zeros(scores.shape[:-1], dtype=torch.bool, device=scores.device)
    scores = scores.masked_fill(scores < kth, -float("inf"))
    if sampling.top_p < 1.0:
        scores = top_p_filter(scores, sampling.top_p)
    return torch.softmax(scores, dim=-1), indices, overflow


def pick_candidates(logits, sampling: Sampling, generator, width: int):
    """The next token of every row, drawn among its `width` largest logits.

    Returns tokens [B] (int64) and overflow [B] (bool): where any row overflowed, its token may
    be wrong, and the caller reruns the batch with `pick_tokens`. No host synchronisation and
    fixed shapes, so a CUDA graph can capture it.
    """
    import torch

    probs, indices, overflow = candidate_probs(logits, sampling, width)
    chosen = sample_one(probs, generator)
    tokens = torch.gather(indices, -1, chosen[..., None])[..., 0]
    return tokens, overflow
