"""Sampling: how a vector of logits becomes the next token.

A language model's forward pass ends in one number per vocabulary entry, the logits. Softmax turns
them into a probability distribution, and *decoding strategy* is just the choice of how to pick a
token from it. Every knob you have seen in an API is one of these small functions:

    greedy          take the argmax: deterministic, often repetitive
    temperature     divide logits by T: T < 1 sharpens the distribution, T > 1 flattens it
    top-k           keep only the k most likely tokens
    top-p (nucleus) keep the smallest set of tokens whose probability mass reaches p
    min-p           keep tokens at least min_p times as likely as the most likely one
    repetition      make tokens already in the text less likely (the CTRL paper's penalty)

Filters work by setting the logits of removed tokens to -inf, so softmax gives them exactly zero.
They compose in a fixed order (penalty, temperature, then filters), the same order Hugging Face's
`generate` applies its logits processors, so our loop and theirs agree.

Every function is pure: logits in, logits out (shape (vocab,) or (batch, vocab)); the only state is
an explicit `torch.Generator`, so the same seed always gives the same tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

NEG_INF = float("-inf")


def greedy(logits: torch.Tensor) -> torch.Tensor:
    """The most likely token id(s). (vocab,) -> () ; (batch, vocab) -> (batch,)"""
    return logits.argmax(dim=-1)


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    assert temperature > 0, "temperature must be positive here; temperature 0 means greedy"
    return logits / temperature


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k highest logits, set the rest to -inf.

    Example: logits [1, 3, 2, 0], k=2 -> [-inf, 3, 2, -inf]
    """
    assert k >= 1, "top_k must be at least 1"
    if k >= logits.shape[-1]:
        return logits
    kth_value = torch.topk(logits, k, dim=-1).values[..., -1:]  # (..., 1)
    return logits.masked_fill(logits < kth_value, NEG_INF)


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering: keep the smallest set of most likely tokens whose total probability >= p.

    Example: probs [0.5, 0.3, 0.15, 0.05], p=0.8 -> keep the first two (0.5 + 0.3 reaches 0.8)
    """
    assert 0 < p <= 1, "top_p must be in (0, 1]"
    if p >= 1.0:
        return logits
    # EXERCISE stage1.top_p: sort descending and cumsum the softmax; drop each token whose predecessors already reach p, and -inf those in the original order
    sorted_logits, sorted_ids = torch.sort(logits, descending=True, dim=-1)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    # A token is removed if the tokens before it already reach p. Shifting by one keeps the token
    # that crosses the threshold, and always keeps the most likely token.
    remove_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= p
    remove = remove_sorted.scatter(-1, sorted_ids, remove_sorted)
    return logits.masked_fill(remove, NEG_INF)
    # END EXERCISE


def min_p_filter(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Keep tokens whose probability is at least min_p times that of the most likely token."""
    assert 0 < min_p <= 1, "min_p must be in (0, 1]"
    probs = logits.softmax(dim=-1)
    threshold = min_p * probs.max(dim=-1, keepdim=True).values
    return logits.masked_fill(probs < threshold, NEG_INF)


def apply_repetition_penalty(
    logits: torch.Tensor, previous_ids: torch.Tensor, penalty: float
) -> torch.Tensor:
    """Make tokens that already appeared less likely: positive logits are divided by the penalty,
    negative ones multiplied (so both move down). penalty 1.0 changes nothing."""
    assert penalty > 0, "repetition_penalty must be positive"
    if penalty == 1.0 or previous_ids.numel() == 0:
        return logits
    seen = torch.gather(logits, -1, previous_ids)
    seen = torch.where(seen > 0, seen / penalty, seen * penalty)
    return logits.scatter(-1, previous_ids, seen)


@dataclass
class SamplingConfig:
    """How to choose each token. temperature 0 means greedy (the filters are then irrelevant)."""

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.min_p is not None and not 0 < self.min_p <= 1:
            raise ValueError(f"min_p must be in (0, 1], got {self.min_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0


def filter_logits(
    logits: torch.Tensor, config: SamplingConfig, previous_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """Apply the penalty, temperature and filters of `config`, in Hugging Face's order."""
    if previous_ids is not None:
        logits = apply_repetition_penalty(logits, previous_ids, config.repetition_penalty)
    if config.is_greedy:
        return logits
    logits = apply_temperature(logits, config.temperature)
    if config.top_k is not None:
        logits = top_k_filter(logits, config.top_k)
    if config.top_p is not None:
        logits = top_p_filter(logits, config.top_p)
    if config.min_p is not None:
        logits = min_p_filter(logits, config.min_p)
    return logits


def sample_next_token(
    logits: torch.Tensor,
    config: SamplingConfig,
    generator: torch.Generator | None = None,
    previous_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pick the next token id(s) from logits of shape (vocab,) or (batch, vocab)."""
    logits = filter_logits(logits.float(), config, previous_ids)
    if config.is_greedy:
        return greedy(logits)
    probs = logits.softmax(dim=-1)
    flat = probs.reshape(-1, probs.shape[-1])  # multinomial wants 2-D
    ids = torch.multinomial(flat, num_samples=1, generator=generator).squeeze(-1)
    return ids.reshape(probs.shape[:-1])
