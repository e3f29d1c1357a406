"""prompts.py: prompt designs as code, and the shipped intent set."""

from __future__ import annotations

import pytest

from stage2_prompting_tools.prompts import (
    INTENTS,
    SYSTEM,
    IntentClassifier,
    PromptConfig,
    accuracy,
    build_messages,
    continuation_logprobs,
    fixed_examples,
    load_intents,
)


def test_the_intent_set_is_split_and_balanced():
    rows = load_intents()
    assert len(rows) >= 150
    for split in ("train", "dev", "test"):
        labels = [r["intent"] for r in rows if r["split"] == split]
        assert set(labels) == set(INTENTS) and len(set(labels.count(i) for i in INTENTS)) == 1
    texts = [r["text"] for r in rows]
    assert len(set(texts)) == len(texts), "no text in two places"


def test_fixed_examples_are_balanced_across_labels():
    shots = fixed_examples(load_intents("train"), 12)
    assert [s["intent"] for s in shots[:6]] == list(INTENTS) and len({s["text"] for s in shots}) == 12


@pytest.mark.exercise("stage2.few_shot_placement")
def test_placements():
    examples = fixed_examples(load_intents("train"), 2)
    zero = build_messages("Where is my parcel?", PromptConfig(0), [])
    assert zero == [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Where is my parcel?"}]
    turns = build_messages("Where is my parcel?", PromptConfig(2, "turns"), examples)
    assert [m["role"] for m in turns] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert turns[2]["content"] == examples[0]["intent"]
    inline = build_messages("Where is my parcel?", PromptConfig(2, "inline"), examples)
    assert len(inline) == 2 and f"Intent: {examples[1]['intent']}" in inline[0]["content"]


@pytest.mark.parametrize("options", [{"shots": -1}, {"placement": "sideways"}, {"selection": "random"}])
def test_config_validates(options):
    with pytest.raises(ValueError):
        PromptConfig(**options)


def test_cached_continuation_scores_equal_a_full_forward_pass(tiny_llama):
    """The cached scoring (one prefill, a private cache copy per continuation) against the plain way:
    one forward pass over prompt + continuation + end token, summing the continuation's log-probs."""
    import torch

    model, tokenizer = tiny_llama
    prompt = tokenizer("Hello there")["input_ids"]
    end = [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    labels = ["billing", "account_access", "feature_request"]
    cached = continuation_logprobs(model, tokenizer, prompt, labels, end_ids=end)
    for label, score in zip(labels, cached, strict=True):
        ids = tokenizer(label, add_special_tokens=False)["input_ids"] + end
        with torch.inference_mode():
            logprobs = model(input_ids=torch.tensor([prompt + ids])).logits[0].float().log_softmax(-1)
        full = sum(float(logprobs[len(prompt) - 1 + i, token]) for i, token in enumerate(ids))
        assert score == pytest.approx(full, abs=1e-4)
    without_end = continuation_logprobs(model, tokenizer, prompt, labels)
    assert all(c < w for c, w in zip(cached, without_end, strict=True)), "the end token is scored too"


@pytest.mark.slow
@pytest.mark.exercise("stage2.few_shot_placement")
def test_classifier_on_the_dev_split_beats_chance(chat_model):
    """The best design (similar examples as turns); all four are measured by `make bench`."""
    rows = load_intents("dev")
    classify = IntentClassifier(chat_model, load_intents("train"), PromptConfig(6, "turns", "similar"))
    assert classify(rows[0]["text"]) in INTENTS
    assert accuracy(classify, rows) >= 0.75  # measured 0.905 (38/42); chance is 1/6
