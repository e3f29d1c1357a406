"""batch.py: every row of a batch decodes exactly as its prompt does alone, for both engines.

Batched fp32 matmuls are not bitwise equal to unbatched ones (other shapes, other summation orders),
so a greedy row may in principle take the other branch where two tokens are a near-tie. The check
allows that and only that: at the first token where a row differs, the two candidates' logits in
the unbatched run must be within parity.NEAR_TIE (1e-3).
"""

from __future__ import annotations

import pytest
import torch

from stage1_foundations.batch import decode_batch, left_pad, positions_from_mask
from stage1_foundations.decode import DecodeConfig, generate
from stage1_foundations.parity import row_agreement

CHAT_PROMPTS = ["What is the capital of France?", "Write a haiku about the sea.", "hi",
                "Name three primary colors and say which one you like best, and why."]  # fmt: skip


def assert_same_or_near_tie(model, prompt: list[int], batched: list[int], alone: list[int]) -> None:
    assert row_agreement(model, prompt, batched, alone) != "different", (
        f"{batched} vs {alone}: not a near-tie"
    )


def test_left_pad_and_positions_worked_examples():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert positions_from_mask(mask).tolist() == [[0, 1, 2], [0, 0, 0]]
    assert positions_from_mask(torch.tensor([[0, 0, 1, 1]])).tolist() == [[0, 0, 0, 1]]


@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "no-cache"])
@pytest.mark.parametrize("engine", ["hf", "scratch"])
@pytest.mark.exercise("stage1.rope", "stage1.gqa_attention", "stage1.static_cache")
def test_tiny_rows_equal_each_prompt_alone(tiny, tiny_scratch, engine, use_cache):
    model, tokenizer = tiny if engine == "hf" else tiny_scratch
    prompts = [tokenizer(t)["input_ids"] for t in ("Hello", "one two three four five six", "Once upon a")]
    config = DecodeConfig(max_new_tokens=16 if use_cache else 8, use_cache=use_cache)
    rows = decode_batch(model, tokenizer, prompts, config)
    for prompt, row in zip(prompts, rows, strict=True):
        alone = generate(model, tokenizer, prompt, config)
        assert_same_or_near_tie(model, prompt, row.token_ids, alone.token_ids)
        assert row.text == alone.text and row.finish_reason == alone.finish_reason


def test_rows_finish_on_their_own_stop_strings(tiny):
    model, tokenizer = tiny
    prompts = [tokenizer(t)["input_ids"] for t in ("Hello", "one two three four")]
    free = decode_batch(model, tokenizer, prompts, DecodeConfig(max_new_tokens=12))
    stop = free[0].text[3:6]  # a piece of the first row's text only
    assert stop and stop not in free[1].text
    rows = decode_batch(model, tokenizer, prompts, DecodeConfig(max_new_tokens=12, stop=[stop]))
    assert rows[0].finish_reason == "stop" and rows[0].text == free[0].text[: free[0].text.index(stop)]
    assert rows[1].finish_reason == "length" and rows[1].token_ids == free[1].token_ids


@pytest.mark.exercise("stage1.rope", "stage1.gqa_attention", "stage1.static_cache", "stage1.top_p")
def test_seeded_sampling_is_reproducible_and_an_empty_batch_is_refused(tiny_scratch):
    from stage1_foundations.sampling import SamplingConfig

    model, tokenizer = tiny_scratch
    prompts = [tokenizer("Hello")["input_ids"], tokenizer("one two")["input_ids"]]
    config = DecodeConfig(max_new_tokens=8, sampling=SamplingConfig(temperature=1.0, top_p=0.9), seed=7,
                          ignore_eos=True)  # fmt: skip
    a, b = decode_batch(model, tokenizer, prompts, config), decode_batch(model, tokenizer, prompts, config)
    assert [r.token_ids for r in a] == [r.token_ids for r in b] and all(r.new_tokens == 8 for r in a)
    with pytest.raises(ValueError, match="empty"):
        decode_batch(model, tokenizer, [], config)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["hf", "scratch"])
@pytest.mark.exercise("stage1.rope", "stage1.gqa_attention", "stage1.static_cache")
def test_real_rows_equal_each_prompt_alone(real, real_scratch, engine):
    model, tokenizer = real if engine == "hf" else real_scratch
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                             return_dict=False) for p in CHAT_PROMPTS]  # fmt: skip
    assert len({len(p) for p in prompts}) == len(prompts), (
        "prompts of different lengths: padding is exercised"
    )
    config = DecodeConfig(max_new_tokens=24)
    rows = decode_batch(model, tokenizer, prompts, config)
    for prompt, row in zip(prompts, rows, strict=True):
        alone = generate(model, tokenizer, prompt, config)
        assert_same_or_near_tie(model, prompt, row.token_ids, alone.token_ids)
    assert "Paris" in rows[0].text
