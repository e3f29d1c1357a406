"""decode.py, the capstone: the hand-written loop must be `generate`, token for token, whichever
engine runs the forward pass (Transformers' model, or the hand-written one of model.py)."""

from __future__ import annotations

import pytest
import torch

from stage1_foundations.decode import (
    DecodeConfig,
    _releasable,
    forward_cached,
    forward_full,
    generate,
    new_cache,
    stream_decode,
)
from stage1_foundations.sampling import SamplingConfig

PLAIN_PROMPTS = ["The capital of France is", "def fibonacci(n):", "Water boils at a temperature of"]
CHAT_PROMPTS = [
    "Write a haiku about the sea.",
    "What is the capital of France?",
    "Name three primary colors.",
]


def hf_greedy(model, tokenizer, ids: list[int], n: int) -> list[int]:
    """Reference: Transformers' own generate, greedy, without the trailing EOS (computed once per
    model, prompt and length: several tests compare against the same reference)."""
    key = (id(model), tuple(ids), n)
    if key not in _REFERENCE:
        _REFERENCE[key] = _hf_greedy(model, tokenizer, ids, n)
    return _REFERENCE[key]


_REFERENCE: dict[tuple, list[int]] = {}


def _hf_greedy(model, tokenizer, ids: list[int], n: int) -> list[int]:
    input_ids = torch.tensor([ids])
    with torch.inference_mode():
        out = model.generate(
            input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=n, do_sample=False,
            temperature=None, top_p=None, top_k=None, pad_token_id=tokenizer.eos_token_id,
        )  # fmt: skip
    new = out[0, len(ids) :].tolist()
    return new[:-1] if new and new[-1] == tokenizer.eos_token_id else new


def chat_ids(tokenizer, prompt: str) -> list[int]:
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, return_dict=False
    )


# --------------------------------------------------------------------------------------------
# Fast: the tiny random model


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("engine", ["hf", "scratch"])
@pytest.mark.exercise("stage1.decode_loop", "stage1.cached_step", "stage1.stream_holdback")
def test_tiny_greedy_loop_equals_generate(tiny, tiny_scratch, engine, use_cache):
    reference, tokenizer = tiny
    model = reference if engine == "hf" else tiny_scratch[0]
    ids = tokenizer("Hello there, how are")["input_ids"]
    ours = generate(model, tokenizer, ids, DecodeConfig(max_new_tokens=24, use_cache=use_cache))
    assert ours.token_ids == hf_greedy(reference, tokenizer, ids, 24)


@pytest.mark.parametrize("engine", ["hf", "scratch"])
@pytest.mark.exercise("stage1.cached_step")
def test_tiny_cached_step_logits_equal_a_full_forward(tiny, tiny_scratch, engine):
    model, tokenizer = tiny if engine == "hf" else tiny_scratch
    ids = torch.tensor([tokenizer("one two three four five")["input_ids"]])
    # prefill all but the last token (into an empty static cache for the hand-written model)
    _, past = forward_cached(model, ids[:, :-1], new_cache(model, 1, ids.shape[1]))
    cached, _ = forward_cached(model, ids[:, -1:], past)  # one cached step
    torch.testing.assert_close(cached, forward_full(model, ids), atol=1e-5, rtol=1e-4)


@pytest.mark.exercise("stage1.decode_loop", "stage1.cached_step", "stage1.stream_holdback")
def test_stream_joins_to_the_text_even_through_split_characters(tiny):
    """Random tokens include byte fragments of multi-byte characters; the stream must hold them back."""
    model, tokenizer = tiny
    config = DecodeConfig(
        max_new_tokens=60, sampling=SamplingConfig(temperature=1.5), seed=3, ignore_eos=True
    )
    ids = tokenizer("Ünïcödé ☕ text:")["input_ids"]
    stream = stream_decode(model, tokenizer, ids, config)
    deltas = []
    while True:
        try:
            deltas.append(next(stream))
        except StopIteration as done:
            result = done.value
            break
    assert "".join(deltas) == result.text == generate(model, tokenizer, ids, config).text
    assert all("\ufffd" not in d for d in deltas[:-1]), "no half characters mid-stream"


@pytest.mark.exercise("stage1.decode_loop", "stage1.cached_step", "stage1.stream_holdback")
def test_max_new_tokens_and_seeded_sampling(tiny):
    model, tokenizer = tiny
    ids = tokenizer("Once")["input_ids"]
    config = DecodeConfig(
        max_new_tokens=10, sampling=SamplingConfig(temperature=1.0, top_k=50), seed=5, ignore_eos=True
    )
    a, b = generate(model, tokenizer, ids, config), generate(model, tokenizer, ids, config)
    assert a.token_ids == b.token_ids and a.new_tokens == 10 and a.finish_reason == "length"
    other = generate(model, tokenizer, ids, DecodeConfig(**{**config.__dict__, "seed": 6}))
    assert other.token_ids != a.token_ids
    assert a.time_to_first_token_s <= a.seconds and a.tokens_per_second > 0


@pytest.mark.exercise("stage1.stream_holdback")
def test_releasable_holds_back_a_possible_stop_string_and_half_characters():
    assert _releasable("x = 1\n    ret", ["return n *"]) == len("x = 1\n    ")  # "ret" may start the stop
    assert _releasable("x = 1\n    return 1", ["return n *"]) == len("x = 1\n    return 1")  # it did not
    assert _releasable("x = 1\n    return n", ["return n *"]) == len("x = 1\n    ")
    assert _releasable("café \ufffd", []) == len("café ")  # the first byte of a character not yet whole


def test_decode_config_validates():
    with pytest.raises(ValueError, match="max_new_tokens"):
        DecodeConfig(max_new_tokens=0)


# --------------------------------------------------------------------------------------------
# Slow: the real model


@pytest.mark.slow
@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "no-cache"])
@pytest.mark.parametrize("chat", [False, True], ids=["plain", "chat"])
@pytest.mark.parametrize("engine", ["hf", "scratch"])
@pytest.mark.exercise("stage1.decode_loop", "stage1.cached_step", "stage1.stream_holdback", "stage1.rmsnorm",
                      "stage1.rope", "stage1.gqa_attention", "stage1.static_cache")  # fmt: skip
def test_real_greedy_loop_equals_generate(real, real_scratch, engine, use_cache, chat):
    reference, tokenizer = real
    model = reference if engine == "hf" else real_scratch[0]
    for prompt in CHAT_PROMPTS if chat else PLAIN_PROMPTS:
        ids = chat_ids(tokenizer, prompt) if chat else tokenizer(prompt)["input_ids"]
        ours = generate(model, tokenizer, ids, DecodeConfig(max_new_tokens=20, use_cache=use_cache))
        assert ours.token_ids == hf_greedy(reference, tokenizer, ids, 20), prompt


@pytest.mark.slow
@pytest.mark.exercise("stage1.cached_step")
def test_real_cached_step_logits_equal_a_full_forward(real):
    model, tokenizer = real
    ids = torch.tensor([chat_ids(tokenizer, "What is the capital of France?") + [504, 3575]])
    _, past = forward_cached(model, ids[:, :-1], new_cache(model, 1, ids.shape[1]))
    cached, _ = forward_cached(model, ids[:, -1:], past)
    full = forward_full(model, ids)
    torch.testing.assert_close(cached, full, atol=1e-4, rtol=1e-4)
    assert cached.argmax() == full.argmax()


@pytest.mark.slow
@pytest.mark.exercise("stage1.decode_loop", "stage1.cached_step", "stage1.stream_holdback")
def test_real_stream_joins_and_stop_strings_cut(real):
    model, tokenizer = real
    ids = tokenizer("def fibonacci(n):")["input_ids"]
    full = generate(model, tokenizer, ids, DecodeConfig(max_new_tokens=30))
    # A stop string that spans three tokens (" return", " n", " *"), and whose first token also
    # starts an earlier line ("return 1"): the stream must hold " return" back until it knows.
    stop = "return n *"
    assert stop in full.text and full.text.index("return") < full.text.index(stop)
    assert len(tokenizer(stop, add_special_tokens=False)["input_ids"]) == 3
    config = DecodeConfig(max_new_tokens=30, stop=[stop])
    cut = generate(model, tokenizer, ids, config)
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[: full.text.index(stop)] and "return 1" in cut.text
    deltas = list(stream_decode(model, tokenizer, ids, config))
    assert "".join(deltas) == cut.text, "a released delta was the start of the stop string"

    question = chat_ids(tokenizer, "What is the capital of France?")
    answer = generate(model, tokenizer, question, DecodeConfig(max_new_tokens=30))
    assert "Paris" in answer.text and answer.finish_reason == "eos"
    assert "".join(stream_decode(model, tokenizer, question, DecodeConfig(max_new_tokens=30))) == answer.text
