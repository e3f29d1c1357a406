"""Whole pairs: measure how long the sequences are before choosing where to cut them.

A trainer needs a maximum sequence length, and TRL cuts every prompt + answer sequence at it
(keeping the start). Cut too short and the trainer learns from pieces: a "rambling" answer is
rambling because of its length, so at 128 tokens the part that shows the fault is gone and DPO is
taught to prefer one polite opening over another. Evaluation scores whole answers, so training on
cut ones would teach one thing and grade another.

So the length is measured, not guessed: each sequence is tokenized exactly as TRL tokenizes it
(the chat template with the generation prompt, then the answer), the longest is rounded up to a
multiple of 16, and the share of sequences longer than the chosen length is reported (0 by
construction when the length is fitted; not 0 when a user asks for less). Training and evaluation
use the same length, read from the adapter folder when there is one.

On the shipped pairs: prompts are 36-68 tokens (the template adds SmolLM2's default system
prompt), chosen answers up to 84, curt rejects about 7, rambling rejects up to 190: the longest
prompt + answer is 239 tokens, so the fitted length is 240.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

ROUND_TO = 16


def sequence_length(tokenizer: Any, prompt: list[dict[str, str]], answer: list[dict[str, str]]) -> int:
    """Tokens of prompt + answer through the chat template: what the trainer's sequence holds."""
    return len(tokenizer.apply_chat_template(list(prompt) + list(answer), tokenize=True, return_dict=False))


def pair_lengths(tokenizer: Any, pairs: Sequence[dict[str, Any]]) -> list[int]:
    """Two per pair: prompt + chosen and prompt + rejected."""
    return [
        sequence_length(tokenizer, p["prompt"], p[side]) for p in pairs for side in ("chosen", "rejected")
    ]


def sft_lengths(tokenizer: Any, examples: Sequence[dict[str, Any]]) -> list[int]:
    return [sequence_length(tokenizer, e["messages"][:-1], e["messages"][-1:]) for e in examples]


def fit_max_length(lengths: Sequence[int], round_to: int = ROUND_TO) -> int:
    """The longest sequence rounded up to a multiple of `round_to`: nothing is cut.

    Example: fit_max_length([40, 239, 120]) -> 240
    """
    if not lengths:
        raise ValueError("no sequences to measure")
    return math.ceil(max(lengths) / round_to) * round_to


def truncated_share(lengths: Sequence[int], max_length: int) -> float:
    """The share of sequences longer than `max_length` (they would be cut)."""
    return sum(n > max_length for n in lengths) / len(lengths) if lengths else 0.0


def length_report(lengths: Sequence[int], max_length: int) -> dict[str, Any]:
    return {"max_length": max_length, "sequences": len(lengths), "longest": max(lengths, default=0),
            "truncated_share": truncated_share(lengths, max_length)}  # fmt: skip
