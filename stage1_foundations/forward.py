"""The forward pass: ids in, one distribution over the vocabulary per position out.

A causal language model reads a sequence of ids and, at every position t, outputs logits for the
token at t + 1, computed from positions 0..t only (the causal mask hides the future). So a single
forward pass over a text gives a prediction at every position at once. That is why training is
parallel, while generation, which must feed each new token back in, is sequential.

    logits = model(ids).logits        # (batch, seq, vocab): a score per vocabulary entry
    probs  = logits.softmax(-1)       # a distribution at each position; each row sums to 1

Reading the last row gives "what comes next". Reading all rows against the actual next tokens
gives the model's surprise at a text: the mean negative log-probability is the cross-entropy, and
its exponential is the **perplexity**, the number of equally likely choices the model is
effectively choosing between. Natural text scores low; shuffled words score high.

    python -m stage1_foundations next-token "The capital of France is"
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class NextToken:
    id: int
    token: str
    text: str
    probability: float


@torch.inference_mode()
def next_token_logits(model: Any, ids: list[int]) -> torch.Tensor:
    """Logits for the token after `ids`: shape (vocab,)."""
    input_ids = torch.tensor([ids], device=model.device)
    return model(input_ids=input_ids).logits[0, -1].float()


def top_next_tokens(model: Any, tokenizer: Any, ids: list[int], n: int = 10) -> list[NextToken]:
    """The n most likely next tokens with their probabilities, best first."""
    assert n >= 1, "n must be at least 1"
    probs = next_token_logits(model, ids).softmax(dim=-1)
    values, indices = torch.topk(probs, min(n, probs.shape[-1]))
    return [
        NextToken(id=i, token=tokenizer.convert_ids_to_tokens(i), text=tokenizer.decode([i]), probability=p)
        for i, p in zip(indices.tolist(), values.tolist(), strict=True)
    ]


@torch.inference_mode()
def perplexity(model: Any, tokenizer: Any, text: str) -> float:
    """exp(mean negative log-likelihood) of the text's tokens, each predicted from those before it."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if tokenizer.bos_token_id is not None:
        ids = [tokenizer.bos_token_id, *ids]  # so the first real token is predicted too
    assert len(ids) >= 2, "perplexity needs at least one token to predict"
    input_ids = torch.tensor([ids], device=model.device)
    # EXERCISE stage1.perplexity: one forward pass; the logits at positions 0..n-2 predict ids 1..n-1; return exp of their mean cross-entropy
    logits = model(input_ids=input_ids).logits[0, :-1].float()  # position t predicts token t+1
    targets = input_ids[0, 1:]
    nll = torch.nn.functional.cross_entropy(logits, targets)
    return math.exp(nll.item())
    # END EXERCISE
