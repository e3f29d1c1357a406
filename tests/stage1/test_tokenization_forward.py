"""tokenization.py and forward.py on the real tokenizer and model."""

from __future__ import annotations

import pytest

from stage1_foundations.forward import perplexity, top_next_tokens
from stage1_foundations.tokenization import render_chat, round_trip, special_tokens, tokenize

TEXT = "Ada Lovelace wrote the first program in 1843, naïvely called 'notes' ☕."


def test_tokens_and_offsets_cover_the_text(tokenizer):
    pieces = tokenize(tokenizer, TEXT)
    assert [p.id for p in pieces] == tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    assert all(p.text == TEXT[p.start : p.end] for p in pieces)
    starts = [p.start for p in pieces]
    assert starts == sorted(starts), "offsets run left to right"
    covered = {i for p in pieces for i in range(p.start, p.end)}
    assert covered == set(range(len(TEXT))), "every character belongs to some token"
    # '☕' is three bytes split over byte-level tokens that share its character span
    assert len({(p.start, p.end) for p in pieces}) < len(pieces)
    assert any(p.token == "ĠLo" and p.text == " Lo" for p in pieces), "a leading space belongs to the token"


def test_round_trip_and_special_tokens(tokenizer):
    assert round_trip(tokenizer, TEXT)
    specials = special_tokens(tokenizer)
    assert specials["<|im_end|>"] == tokenizer.eos_token_id


def test_chat_template_renders_the_exact_ids(tokenizer):
    text, ids = render_chat(tokenizer, [{"role": "user", "content": "hi"}])
    assert text.startswith("<|im_start|>system\n") and text.endswith(
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == ids


@pytest.mark.slow
@pytest.mark.exercise("stage1.perplexity")
def test_next_token_distribution_and_perplexity(real):
    model, tokenizer = real
    tops = top_next_tokens(model, tokenizer, tokenizer("The capital of France is")["input_ids"], 5)
    assert tops[0].text == " Paris" and tops[0].probability > 0.5
    probs = [t.probability for t in tops]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 1.0
    natural = perplexity(model, tokenizer, "The cat sat on the mat and looked out of the window.")
    shuffled = perplexity(model, tokenizer, "window the mat cat of looked sat and on the out the.")
    assert 1 < natural < shuffled / 5
