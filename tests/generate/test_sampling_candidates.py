"""Top-k sampling over each row's largest logits: the same kept set and probabilities as the
full-vocabulary path, an overflow flag that is exactly right, and a faithful draw."""

import math

import pytest
import torch

from emflow.generate.sampling import (
    CANDIDATE_LIMIT,
    CANDIDATE_MARGIN,
    Sampling,
    candidate_probs,
    candidate_width,
    pick_candidates,
    pick_tokens,
    warp_scores,
)


def full_probs(logits, sampling):
    return torch.softmax(warp_scores(logits.float(), sampling), dim=-1)


def scattered(probs, indices, vocab):
    return torch.zeros(probs.shape[0], vocab).scatter(-1, indices, probs)


def assert_same_distribution(mine, expected, scores, exact_set):
    """Equal probabilities on the same kept set. Where several tokens share the score at the
    top-p cut, which of them the cut keeps is the sort's order among equals (transformers' too),
    so unless exact_set the two sets may swap tokens of that one score, nothing else."""
    kept, kept_full = mine > 0, expected > 0
    if exact_set:
        assert torch.equal(kept, kept_full)
    assert torch.equal(kept.sum(-1), kept_full.sum(-1))
    agree = kept == kept_full
    torch.testing.assert_close(mine[agree], expected[agree], rtol=0, atol=1e-6)
    for row in torch.nonzero(~agree.all(-1)).flatten().tolist():
        assert scores[row, ~agree[row]].unique().numel() == 1, f"row {row}: not a tie swap"
    torch.testing.assert_close(mine.sort(-1).values, expected.sort(-1).values, rtol=0, atol=1e-6)


def random_logits(dtype, rows=16, vocab=3000, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, vocab, generator=g) * 3).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "temperature,top_k,top_p",
    [(1.0, 50, 1.0), (0.7, 50, 0.9), (1.3, 5, 0.5), (0.3, 1, 1.0), (1.0, 200, 0.95)],
)
def test_kept_set_and_probabilities_are_the_full_paths(dtype, temperature, top_k, top_p):
    sampling = Sampling(temperature=temperature, top_p=top_p, top_k=top_k)
    logits = random_logits(dtype)
    probs, indices, overflow = candidate_probs(logits, sampling, candidate_width(sampling))
    assert probs.shape == indices.shape == (16, top_k + CANDIDATE_MARGIN)
    assert not overflow.any()
    mine = scattered(probs, indices, logits.shape[-1])
    scores = logits.float() / temperature
    # float32 normal draws have no ties; bf16 and fp16 have many.
    exact_set = dtype == torch.float32 or top_p == 1.0
    assert_same_distribution(mine, full_probs(logits, sampling), scores, exact_set)


def test_ties_past_the_candidates_overflow():
    """200 equal bf16 values around rank k cannot fit in top_k + margin: those rows overflow."""
    sampling = Sampling(temperature=0.7, top_k=50)
    logits = random_logits(torch.bfloat16, rows=6, vocab=4000, seed=1)
    tied = (0, 3)
    for row in tied:
        order = logits[row].float().argsort(descending=True)
        # Ranks 40..239 share the value of rank 40: the k-th (50th) score sits in the group.
        logits[row, order[40:240]] = logits[row, order[40]].item()
    probs, indices, overflow = candidate_probs(logits, sampling, candidate_width(sampling))
    assert overflow.tolist() == [row in tied for row in range(6)]
    # The rows that did not overflow are still exact.
    expected = full_probs(logits, sampling)
    mine = scattered(probs, indices, logits.shape[-1])
    for row in range(6):
        if row not in tied:
            torch.testing.assert_close(mine[row], expected[row], rtol=0, atol=1e-6)
    # Every tied token is kept by the full path, more than the candidates hold.
    assert (expected[0] > 0).sum() >= 240 > indices.shape[-1]


def test_ties_inside_the_margin_are_exact():
    sampling = Sampling(temperature=1.0, top_k=50)
    logits = random_logits(torch.bfloat16, rows=4, vocab=4000, seed=2)
    for row in range(4):
        order = logits[row].float().argsort(descending=True)
        logits[row, order[45:80]] = logits[
            row, order[45]
        ].item()  # 35 ties across rank k, in the margin
    probs, indices, overflow = candidate_probs(logits, sampling, candidate_width(sampling))
    assert not overflow.any()
    expected = full_probs(logits, sampling)
    mine = scattered(probs, indices, logits.shape[-1])
    assert torch.equal(mine > 0, expected > 0)
    assert ((expected > 0).sum(-1) >= 80).all()  # the whole tie group is kept
    torch.testing.assert_close(mine, expected, rtol=0, atol=1e-6)


def test_ties_made_by_the_temperature_overflow():
    """Distinct logits that the division rounds to one score: the full path keeps both, so the
    comparison must be on scaled scores, not on logits."""
    sampling = Sampling(temperature=0.7, top_k=3)
    # Two neighbouring float32 logits whose quotients by 0.7 round to the same float32.
    x = torch.tensor(1.8)
    y = torch.nextafter(x, torch.tensor(0.0))
    while x / sampling.temperature != y / sampling.temperature:
        x, y = y, torch.nextafter(y, torch.tensor(0.0))
    logits = torch.full((1, 300), y.item())
    logits[0, :3] = torch.tensor([5.0, 4.0, x.item()])  # x is the k-th, the rest are below it
    width = candidate_width(sampling)
    probs, indices, overflow = candidate_probs(logits, sampling, width)
    assert overflow.tolist() == [True]
    # The full path keeps every token, far more than the candidates.
    assert (full_probs(logits, sampling) > 0).sum() == 300 > width


def test_the_draw_follows_the_warped_probabilities():
    rows, vocab = 20000, 50
    sampling = Sampling(temperature=0.8, top_k=10, top_p=0.9)
    base = torch.randn(vocab, generator=torch.Generator().manual_seed(3)) * 2
    logits = base.expand(rows, vocab).to(torch.bfloat16)
    width = candidate_width(sampling)
    tokens, overflow = pick_candidates(logits, sampling, torch.Generator().manual_seed(11), width)
    assert tokens.dtype == torch.int64 and tokens.shape == (rows,)
    assert not overflow.any()
    expected = full_probs(logits[:1], sampling)[0]
    counts = torch.bincount(tokens, minlength=vocab).double()
    assert counts[expected == 0].sum() == 0  # only kept tokens are drawn
    freq = counts / rows
    for token in torch.nonzero(expected).flatten().tolist():
        p = expected[token].item()
        stderr = math.sqrt(p * (1 - p) / rows)
        assert abs(freq[token].item() - p) <= 5 * stderr, f"token {token}"
    again, _ = pick_candidates(logits, sampling, torch.Generator().manual_seed(11), width)
    other, _ = pick_candidates(logits, sampling, torch.Generator().manual_seed(12), width)
    assert torch.equal(again, tokens)
    assert not torch.equal(other, tokens)


def test_pick_tokens_takes_bf16_logits():
    sampling = Sampling(temperature=0.7, top_k=20, top_p=0.9)
    logits = random_logits(torch.bfloat16, rows=8, vocab=500, seed=4)
    a = pick_tokens(logits, sampling, torch.Generator().manual_seed(5))
    b = pick_tokens(logits.float(), sampling, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    greedy = pick_tokens(logits, Sampling(temperature=0.0), None)
    assert torch.equal(greedy, logits.float().argmax(-1))


def test_candidate_width_applies_only_to_top_k_sampling():
    assert candidate_width(Sampling(temperature=0.0, top_k=50)) is None
    assert candidate_width(Sampling(temperature=1.0, top_k=None)) is None
    assert candidate_width(Sampling(temperature=1.0, top_k=0)) is None
    assert candidate_width(Sampling(temperature=1.0, top_k=CANDIDATE_LIMIT + 1)) is None
    assert candidate_width(Sampling(temperature=0.7, top_k=50)) == 50 + CANDIDATE_MARGIN
    with pytest.raises(ValueError):
        candidate_probs(random_logits(torch.float32), Sampling(top_k=None), 64)


def test_small_vocabulary_never_overflows():
    """Candidates that hold the whole vocabulary hold every kept token."""
    sampling = Sampling(temperature=1.0, top_k=50)
    logits = torch.zeros(3, 40)  # every token ties the k-th, and all are candidates
    probs, indices, overflow = candidate_probs(logits, sampling, candidate_width(sampling))
    assert probs.shape == (3, 40) and not overflow.any()
    torch.testing.assert_close(scattered(probs, indices, 40), full_probs(logits, sampling))
