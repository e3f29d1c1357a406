"""Speculative decoding, greedy: guess several tokens cheaply, check them all in one forward pass.

At batch 1 a decode step is bound by reading the weights, not by arithmetic: running the model on 5
tokens costs little more than on 1. Speculative decoding spends that slack. A cheap **draft**
proposes k tokens; the full model runs once on [last token, d1, ..., dk] and so computes its own
greedy choice after every prefix at once. The draft's tokens are kept while they agree with those
choices, and the model's choice at the first disagreement comes free:

    draft     d1  d2  d3  d4          model's argmax after: last, d1, d2, d3, d4  ->  t0 t1 t2 t3 t4
    accepted  d1 = t0, d2 = t1, d3 != t2   ->  emit d1 d2 t2   (3 tokens for one forward pass)

Every emitted token is the model's own greedy choice given the tokens before it, so the output is
exactly the greedy output (up to float rounding between a one-token and a five-token pass). The
speed-up is (tokens emitted per pass) / (cost of a pass of k+1 tokens relative to one).

**The draft here is prompt lookup (n-gram matching)**: find the most recent earlier place where the
last n tokens of the sequence occurred, and propose what followed them there. It needs no second
model and costs microseconds, and it shines when the answer copies from the prompt (extraction,
summaries that quote, code edits, "repeat after me"); on open-ended text it rarely matches and the
engine then decodes normally. The bench measures both workloads.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def propose_ngram(tokens: Sequence[int], k: int, max_n: int = 3, min_n: int = 1) -> list[int]:
    """Up to k tokens that followed the most recent earlier occurrence of the sequence's last n
    tokens, for the longest n in max_n..min_n that occurs; [] when none does.

    Example: tokens [5, 6, 7, 8, 5, 6], k=2 -> [7, 8]  (the tail [5, 6] occurred at the start)
    """
    for n in range(max_n, min_n - 1, -1):
        if len(tokens) <= n:
            continue
        tail = list(tokens[-n:])
        for start in range(len(tokens) - n - 1, -1, -1):
            if list(tokens[start : start + n]) == tail:
                return list(tokens[start + n : start + n + k])
    return []


def verify_greedy(draft: Sequence[int], logits: torch.Tensor) -> tuple[int, int]:
    """(how many draft tokens to accept, the model's next token after them).

    logits (len(draft) + 1, vocab): row i is the model's distribution after the last token and d1..di.
    """
    # EXERCISE stage5.spec_verify: take the argmax of every row; accept draft tokens while each equals the argmax of the row before it; return (accepted, the argmax of the row after the last accepted one)
    choices = logits.argmax(dim=-1).tolist()  # choices[i]: the model's token after d1..di
    accepted = 0
    while accepted < len(draft) and draft[accepted] == choices[accepted]:
        accepted += 1
    return accepted, choices[accepted]
    # END EXERCISE
