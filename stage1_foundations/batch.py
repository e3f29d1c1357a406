"""Batched decoding: several prompts through the model at once, each row exactly as if alone.

At batch 1 a decode step reads every weight of the model (538 MB for SmolLM2 in fp32) to make one
token, and the CPU spends most of the step waiting on memory. Put 16 prompts in one batch and the
same read of the weights makes 16 tokens: aggregate throughput rises almost for free until
arithmetic, not memory, becomes the limit. That is the economics of every serving engine, and why
stage 5's vLLM batches whatever requests it has. Three details make a batch correct:

- **Left padding.** Prompts have different lengths; we pad the short ones *on the left*, so that
  every row's newest token sits in the last column and each step appends one column for all rows.

      row 0:  <pad> <pad>  What   is   2+2    ?        mask  0 0 1 1 1 1
      row 1:  Name  three  primary colors .   please    mask  1 1 1 1 1 1

- **The attention mask** (B, slots) marks padding with 0, so no real token ever attends to a pad.
- **Per-row positions.** A row's first real token is position 0, whatever padding precedes it:
  position = (number of real tokens up to here) - 1 = cumsum(mask) - 1. (With RoPE a constant shift
  of a whole row would change nothing in exact arithmetic, since scores depend on m - n only; we
  count from the first real token anyway, as Transformers does, so the numbers match its and an
  absolute-position model would be right too. What must never happen is a new token placed at a
  different distance from the cached ones than it really is: the tests break it on purpose.)

Rows finish at different times (their own EOS, a stop string, the budget). A finished row keeps
its seat in the batch until the last row ends, computing tokens nobody reads: that waste, and the
wait of a new request for the whole batch to end, are what *continuous batching* removes (stage 5).

Both engines run through this one loop: Transformers' `LlamaForCausalLM` (with its `DynamicCache`)
and the hand-written `model.py` (with its static cache); the tests check that every row's greedy
output equals the same prompt decoded alone.

    python -m stage1_foundations generate --engine scratch --chat "Name three colors." "What is 2+2?"
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from stage1_foundations.decode import DecodeConfig, DecodeResult, eos_ids, new_cache
from stage1_foundations.sampling import apply_repetition_penalty, sample_next_token


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts of different lengths -> ids (B, L) padded on the left, and the mask (B, L).

    Example: [[5, 6, 7], [8]], pad 0 -> ids [[5, 6, 7], [0, 0, 8]], mask [[1, 1, 1], [0, 0, 1]]
    """
    longest = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), longest), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        if prompt:
            ids[row, longest - len(prompt) :] = torch.tensor(list(prompt))
            mask[row, longest - len(prompt) :] = 1
    return ids, mask


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Each token's position in its own row: (B, L) 0/1 mask -> (B, L), padding clamped to 0.

    Example: [[0, 0, 1, 1]] -> [[0, 0, 0, 1]]
    """
    return (mask.cumsum(dim=-1) - 1).clamp(min=0)


def _logits(model: Any, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, past: Any,
            use_cache: bool) -> tuple[torch.Tensor, Any]:  # fmt: skip
    """The last position's logits (B, vocab) for both engines, through Transformers' calling convention."""
    with torch.inference_mode():
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=past,
                    use_cache=use_cache, logits_to_keep=1)  # fmt: skip
    return out.logits[:, -1, :].float(), out.past_key_values if use_cache else None


def decode_batch(
    model: Any, tokenizer: Any, prompts: Sequence[Sequence[int]], config: DecodeConfig
) -> list[DecodeResult]:
    """Decode every prompt in one batch; results in input order, each as `decode.generate` gives it."""
    if not prompts:
        raise ValueError("the batch is empty: give at least one prompt")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt must have at least one token")
    device = model.device
    generator = torch.Generator(device=device).manual_seed(config.seed) if config.seed is not None else None
    stop_ids = set() if config.ignore_eos else eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids, mask = left_pad(prompts, pad_id)
    ids, mask = ids.to(device), mask.to(device)
    positions = positions_from_mask(mask)
    batch = len(prompts)
    past = new_cache(model, batch, ids.shape[1] + config.max_new_tokens) if config.use_cache else None

    start = time.perf_counter()
    new_ids: list[list[int]] = [[] for _ in range(batch)]
    texts = [""] * batch
    finish: list[str | None] = [None] * batch
    finished_at = [0.0] * batch
    first_token_at = 0.0
    step_ids, step_positions = ids, positions  # the prefill feeds every column; later steps one
    for _ in range(config.max_new_tokens):
        if config.use_cache:
            logits, past = _logits(model, step_ids, mask, step_positions, past, True)
        else:  # the whole (B, L + t) sequence again, every step
            logits, _ = _logits(model, ids, mask, positions, None, False)
        if config.sampling.repetition_penalty != 1.0:  # per row, over that row's real tokens only
            for row in range(batch):
                seen = torch.tensor([list(prompts[row]) + new_ids[row]], device=device)
                logits[row : row + 1] = apply_repetition_penalty(
                    logits[row : row + 1], seen, config.sampling.repetition_penalty
                )
        next_ids = sample_next_token(logits, config.sampling, generator)  # (B,)
        now = time.perf_counter()
        first_token_at = first_token_at or now
        for row, token in enumerate(next_ids.tolist()):
            if finish[row] is not None:
                continue  # a finished row keeps its seat; its tokens are not read
            if token in stop_ids:
                finish[row], finished_at[row] = "eos", now
                continue
            new_ids[row].append(token)
            texts[row] = tokenizer.decode(new_ids[row], skip_special_tokens=True)
            hits = [i for s in config.stop if (i := texts[row].find(s)) >= 0]
            if hits:
                texts[row], finish[row], finished_at[row] = texts[row][: min(hits)], "stop", now
            elif len(new_ids[row]) == config.max_new_tokens:
                finish[row], finished_at[row] = "length", now
        if all(f is not None for f in finish):
            break
        # append one column: the new token of every row, a real slot (mask 1), one position further
        step_ids = next_ids.view(batch, 1).to(device)
        step_positions = positions[:, -1:] + 1
        ids = torch.cat([ids, step_ids], dim=1)
        mask = torch.cat([mask, torch.ones((batch, 1), dtype=mask.dtype, device=device)], dim=1)
        positions = torch.cat([positions, step_positions], dim=1)
    return [
        DecodeResult(
            text=texts[row],
            token_ids=new_ids[row],
            finish_reason=finish[row] or "length",
            seconds=(finished_at[row] or time.perf_counter()) - start,
            time_to_first_token_s=first_token_at - start,
        )  # fmt: skip
        for row in range(batch)
    ]
