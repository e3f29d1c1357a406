"""sampling.py: pure functions on logits, checked by their definitions and against Transformers'."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare

from stage1_foundations.sampling import (
    SamplingConfig,
    apply_repetition_penalty,
    filter_logits,
    greedy,
    min_p_filter,
    sample_next_token,
    top_k_filter,
    top_p_filter,
)


def random_logits(seed: int, shape=(4, 50)) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 3


@pytest.mark.parametrize("k", [1, 3, 10, 50])
def test_top_k_keeps_exactly_k_highest(k):
    logits = random_logits(1)
    kept = torch.isfinite(top_k_filter(logits, k))
    assert (kept.sum(dim=-1) == k).all()
    top = torch.topk(logits, k).indices
    assert kept.gather(-1, top).all()


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9, 0.99])
@pytest.mark.exercise("stage1.top_p")
def test_top_p_keeps_the_smallest_set_reaching_p(p):
    for seed in range(5):
        logits = random_logits(seed)
        probs = logits.softmax(-1)
        kept = torch.isfinite(top_p_filter(logits, p))
        for row in range(logits.shape[0]):
            kept_probs = probs[row][kept[row]]
            assert kept_probs.sum() >= p - 1e-6, "the kept set reaches p"
            assert kept_probs.sum() - kept_probs.min() < p, "and no smaller set would"
            dropped = probs[row][~kept[row]]
            assert dropped.numel() == 0 or dropped.max() <= kept_probs.min(), (
                "kept tokens are the most likely"
            )


@pytest.mark.exercise("stage1.top_p")
def test_top_p_worked_example():
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    assert torch.isfinite(top_p_filter(logits, 0.7)).tolist() == [True, True, False, False]
    assert torch.isfinite(top_p_filter(logits, 0.5)).tolist() == [True, False, False, False]
    assert torch.isfinite(top_p_filter(logits, 1.0)).all()


@pytest.mark.exercise("stage1.top_p")
def test_filters_agree_with_transformers_logits_processors():
    from transformers import (
        MinPLogitsWarper,
        RepetitionPenaltyLogitsProcessor,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    logits = random_logits(7)
    ids = torch.tensor([[1, 2, 3]] * 4)
    assert torch.equal(
        torch.isfinite(top_k_filter(logits, 5)), torch.isfinite(TopKLogitsWarper(5)(ids, logits))
    )
    assert torch.equal(
        torch.isfinite(top_p_filter(logits, 0.8)), torch.isfinite(TopPLogitsWarper(0.8)(ids, logits.clone()))
    )
    assert torch.equal(
        torch.isfinite(min_p_filter(logits, 0.1)), torch.isfinite(MinPLogitsWarper(0.1)(ids, logits.clone()))
    )
    torch.testing.assert_close(
        apply_repetition_penalty(logits, ids, 1.3), RepetitionPenaltyLogitsProcessor(1.3)(ids, logits.clone())
    )


def test_temperature_towards_zero_equals_greedy():
    logits = random_logits(3, shape=(64, 100))
    config = SamplingConfig(temperature=1e-4)
    sampled = sample_next_token(logits, config, torch.Generator().manual_seed(0))
    assert torch.equal(sampled, greedy(logits))
    assert torch.equal(sample_next_token(logits, SamplingConfig(temperature=0)), greedy(logits))


def test_same_seed_same_tokens_other_seed_differs():
    logits = torch.zeros(200, 1000)  # uniform: any difference in the random stream shows
    config = SamplingConfig(temperature=1.0)
    a = sample_next_token(logits, config, torch.Generator().manual_seed(42))
    b = sample_next_token(logits, config, torch.Generator().manual_seed(42))
    c = sample_next_token(logits, config, torch.Generator().manual_seed(43))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_sampled_frequencies_match_the_filtered_distribution():
    """Chi-square goodness of fit: 20,000 draws from top-k=5 at temperature 0.7."""
    logits = torch.tensor([2.0, 1.5, 1.0, 0.8, 0.5, 0.4, -1.0, -2.0])
    config = SamplingConfig(temperature=0.7, top_k=5)
    expected = filter_logits(logits, config).softmax(-1)
    draws = sample_next_token(logits.expand(20_000, -1), config, torch.Generator().manual_seed(0))
    counts = torch.bincount(draws, minlength=8)
    assert counts[5:].sum() == 0, "filtered-out tokens are never sampled"
    kept = expected[:5].double()  # float64, summing to exactly the draws, as chisquare demands
    result = chisquare(counts[:5].double().numpy(), (kept / kept.sum() * counts[:5].sum()).numpy())
    assert result.pvalue > 0.001, f"frequencies {counts.tolist()} do not fit {expected.tolist()}"


def test_min_p_and_repetition_penalty_definitions():
    logits = torch.tensor([0.5, 0.25, 0.2, 0.05]).log()
    assert torch.isfinite(min_p_filter(logits, 0.45)).tolist() == [True, True, False, False]
    penalised = apply_repetition_penalty(torch.tensor([[2.0, -2.0, 1.0]]), torch.tensor([[0, 1]]), 2.0)
    assert penalised.tolist() == [[1.0, -4.0, 1.0]]


@pytest.mark.parametrize(
    "options", [{"temperature": -0.1}, {"top_k": 0}, {"top_p": 0.0}, {"top_p": 1.5}, {"min_p": 2.0}]
)
def test_config_rejects_bad_values_with_the_value_in_the_message(options):
    with pytest.raises(ValueError, match=str(next(iter(options.values())))):
        SamplingConfig(**options)
