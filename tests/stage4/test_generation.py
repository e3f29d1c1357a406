"""generation.py: the style rules, the figures, and replies batched or one by one."""

from __future__ import annotations

import pytest

from stage4_finetune_align.generation import generate_ids, served_replies, style_figures, style_score


@pytest.mark.exercise("stage4.style_score")
def test_style_score():
    assert style_score("Sorry about that. Please send me the order number and I will check it.")["score"] == 1
    blaming = style_score(
        "You obviously didn't read the manual. This is your fault. Try again. Or not. Whatever."
    )
    assert not blaming["no_blame"] and not blaming["at_most_three_sentences"]
    assert style_score("")["at_most_three_sentences"] is False, "an empty reply has no sentence"


@pytest.mark.exercise("stage4.style_score")
def test_style_figures_are_shares_over_the_replies():
    replies = ["Thanks! Please send me the invoice number and I'll fix it today.",  # all three rules
               "You should have read the manual. Go to Settings.",  # blames
               "One. Two. Three. Four. Please try again."]  # five sentences  # fmt: skip
    figures = style_figures(replies)
    assert figures["prompts"] == 3 and figures["all_rules"] == pytest.approx(1 / 3)
    assert figures["blame_rate"] == pytest.approx(1 / 3) and figures["mean_sentences"] == pytest.approx(
        (2 + 2 + 5) / 3
    )


def test_batched_replies_are_the_one_by_one_greedy_replies(tiny_llama):
    """Left padding is masked out: a prompt's greedy reply does not depend on its batch mates."""
    import copy

    import torch

    model, tokenizer = tiny_llama
    model = copy.deepcopy(model)
    torch.manual_seed(1)
    with torch.no_grad():  # larger random weights: varied tokens instead of one repeated newline
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.5)
    prompts = [[{"role": "user", "content": text}] for text in ("hi", "my invoice is wrong, please help me today",
                                                                 "where is my order?")]  # fmt: skip
    alone = [generate_ids(model, tokenizer, [p], max_new_tokens=12)[0] for p in prompts]
    assert generate_ids(model, tokenizer, prompts, max_new_tokens=12, batch_size=3) == alone
    assert len({tuple(ids) for ids in alone}) == 3 and all(len(set(ids)) > 2 for ids in alone), (
        "varied replies"
    )


def test_served_replies_keep_the_order_of_the_prompts():
    class Scripted:  # answers each prompt with its own text, after a delay that reverses their order
        def chat(self, messages, max_tokens, temperature):
            import time
            from types import SimpleNamespace

            assert temperature == 0.0 and max_tokens == 7
            time.sleep(0.05 * (5 - int(messages[-1]["content"])))
            return SimpleNamespace(text=f" reply {messages[-1]['content']} ", finish_reason="stop")

    prompts = [[{"role": "user", "content": str(i)}] for i in range(5)]
    assert served_replies(Scripted(), prompts, max_new_tokens=7, concurrency=5) == [
        f"reply {i}" for i in range(5)
    ]


@pytest.mark.exercise("stage4.style_score")
def test_a_next_step_is_an_action_and_a_specific():
    assert style_score("Reset it.")["next_step"] is False, "an action with nothing concrete: a curt answer"
    assert style_score("It's in settings.")["next_step"] is False, "no action"
    for reply in ('Turn on Call Guard under Add-ons > Security.', 'Sign up, then apply from Billing > "Plans".',
                  "Send me the order number and I'll check it.", "I've refunded the €2.50 as a one-off."):  # fmt: skip
        assert style_score(reply)["next_step"], reply


@pytest.mark.exercise("stage4.style_score")
def test_the_rules_on_the_datas_own_answers():
    """Calibrating the instrument on the held-out split (the rules were written from the training split):
    the chosen answers pass, curt and rambling rejects fail, and the blame list sees some of the blame."""
    from stage4_finetune_align.data import load_pairs
    from stage4_finetune_align.generation import rules_on_the_data

    checked = rules_on_the_data(load_pairs(split="test"))
    chosen, rejected = checked["chosen"], checked["rejected"]
    assert chosen["at_most_three_sentences_rate"] == 1.0 and chosen["blame_rate"] == 0.0
    assert chosen["all_rules"] >= 0.75, "most held-out chosen answers meet all three rules"
    assert rejected["curt"]["next_step_rate"] <= 0.05, "a curt answer has no concrete next step"
    assert rejected["rambling"]["at_most_three_sentences_rate"] == 0.0, (
        "every rambling reject runs past three"
    )
    assert rejected["blaming"]["blame_rate"] >= 0.3, "the phrase list catches a share of the blaming answers"
    assert rejected["curt"]["all_rules"] <= 0.05 and rejected["rambling"]["all_rules"] == 0.0
