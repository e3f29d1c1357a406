"""Did training change the model, on pairs and prompts it never saw? Two measurements, one diagnostic.

1. Likelihood accuracy (the headline on pairs): for each held-out pair, is the whole chosen answer
   likelier than the whole rejected one under the model, log p(chosen|x) > log p(rejected|x)?
   No reference model is involved, so the base model gets a real score too. It is a hard test:
   log-probabilities are sums over tokens, so a 7-token curt reply starts far likelier than a
   58-token helpful one, and the model must learn to make the curt reply *unlikely*.
2. What the model writes (`generation.py`): greedy replies to every held-out prompt, scored by the
   style rules. That is the behaviour a user meets.

The diagnostic: DPO's implicit reward r(y) = beta * (log pi(y|x) - log ref(y|x)), with the base as
the reference. Its accuracy (the share of pairs with r(chosen) > r(rejected), a tie counting half)
is what TRL logs as rewards/accuracies during training. It is *relative*: the base model is its own
reference, so each of its pairs ties and its figure is 0.5 by construction, not by measurement. It
says how far the policy moved in the preferred direction, not which answer the model now favours.

Pairs are tokenized and truncated exactly as TRL's DPO trainer does it (same collator, same max
length, read from the adapter folder when there is one), and the share truncated is reported.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from shared.console import BadInput
from shared.models import DEFAULT_CHAT_MODEL

TOKENS_PER_BATCH = (
    2048  # rows x width of one scoring batch: its logits alone are 2048 x 49152 floats (400 MB)
)


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def tokenize_pair(tokenizer: Any, pair: dict[str, Any]) -> dict[str, list[int]]:
    """prompt_ids, chosen_ids, rejected_ids as TRL's DPO trainer builds them from a conversational pair."""

    def ids(messages: list[dict[str, str]], generation_prompt: bool = False) -> list[int]:
        return list(tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=True,
                                                  return_dict=False))  # fmt: skip

    prompt = ids(pair["prompt"], generation_prompt=True)
    chosen, rejected = ids(pair["prompt"] + pair["chosen"]), ids(pair["prompt"] + pair["rejected"])
    cut = min(common_prefix_length(prompt, chosen), common_prefix_length(prompt, rejected))
    return {"prompt_ids": prompt[:cut], "chosen_ids": chosen[cut:], "rejected_ids": rejected[cut:]}


def adapter_max_length(adapter: Path | None) -> int | None:
    """The max length the adapter was trained with (written by `train`), so evaluation cuts the same way."""
    if adapter is None or not (Path(adapter) / "stage4_train.json").is_file():
        return None
    return json.loads((Path(adapter) / "stage4_train.json").read_text()).get("max_length")


def load_for_eval(adapter: Path | None, model: str = DEFAULT_CHAT_MODEL) -> tuple[Any, Any, bool]:
    """(model, tokenizer, has_adapter): the base (or a merged directory), with the adapter on top if given."""
    from stage4_finetune_align.train import check_adapter, load_base

    if adapter is not None:
        check_adapter(adapter)
    base, tokenizer = load_base(model, "none")
    if adapter is None:
        return base.eval(), tokenizer, False
    from peft import PeftModel

    return PeftModel.from_pretrained(base, str(adapter)).eval(), tokenizer, True


def answer_sequences(
    tokenizer: Any, pairs: Sequence[dict[str, Any]], max_length: int
) -> list[tuple[list[int], list[int]]]:
    """(input ids, completion mask) of prompt + chosen, then prompt + rejected, for every pair: 2N sequences.

    Cut at `max_length` keeping the start, as TRL's collator does (with a fitted length, nothing is cut).
    """
    sequences = []
    for pair in pairs:
        t = tokenize_pair(tokenizer, pair)
        for side in ("chosen_ids", "rejected_ids"):
            ids = t["prompt_ids"] + t[side]
            mask = [0] * len(t["prompt_ids"]) + [1] * len(t[side])
            sequences.append((ids[:max_length], mask[:max_length]))
    return sequences


def pair_logprobs(model: Any, tokenizer: Any, pairs: Sequence[dict[str, Any]], max_length: int,
                  on_sequences: Callable[[int], None] | None = None) -> tuple[Any, Any]:  # fmt: skip
    """(chosen, rejected) summed answer log-probabilities, each (N,).

    Sequences of similar length share a batch (a curt reply padded to a rambling one's 240 tokens
    would waste three quarters of the work); padding is on the right and masked out.
    """
    import torch

    from stage4_finetune_align.dpo import sequence_logprobs

    sequences = answer_sequences(tokenizer, pairs, max_length)
    scores = torch.zeros(len(sequences))
    batches: list[list[int]] = [[]]
    for i in sorted(range(len(sequences)), key=lambda i: len(sequences[i][0])):  # shortest first
        if batches[-1] and (len(batches[-1]) + 1) * len(sequences[i][0]) > TOKENS_PER_BATCH:
            batches.append([])
        batches[-1].append(i)  # a batch is as wide as its last (longest) sequence
    for chunk in batches:
        width = len(sequences[chunk[-1]][0])
        pad = [width - len(sequences[i][0]) for i in chunk]
        ids = torch.tensor(
            [sequences[i][0] + [tokenizer.pad_token_id] * n for i, n in zip(chunk, pad, strict=True)]
        )
        mask = torch.tensor([sequences[i][1] + [0] * n for i, n in zip(chunk, pad, strict=True)])
        attention = torch.tensor([[1] * (width - n) + [0] * n for n in pad])
        with torch.inference_mode():
            logits = model(
                input_ids=ids.to(model.device), attention_mask=attention.to(model.device)
            ).logits  # (b, width, V)
        scores[chunk] = sequence_logprobs(logits, ids.to(model.device), mask.to(model.device)).cpu()
        if on_sequences:
            on_sequences(len(chunk))
    return scores[0::2], scores[1::2]


def implicit_reward_diagnostic(
    policy: tuple[Any, Any], reference: tuple[Any, Any], beta: float
) -> dict[str, Any]:
    """DPO's implicit-reward accuracy (ties count half), mean margin and loss against a reference."""
    from stage4_finetune_align.dpo import dpo_loss

    loss, chosen_rewards, rejected_rewards = dpo_loss(policy[0], policy[1], reference[0], reference[1], beta)
    margins = chosen_rewards - rejected_rewards
    credit = (margins > 0).float() + 0.5 * (margins == 0).float()
    return {"implicit_reward_accuracy": float(credit.mean()), "mean_margin": float(margins.mean()),
            "dpo_loss": float(loss), "beta": beta, "reference": "the base model (adapter off)",
            "note": "training diagnostic, relative to the base: the base model is its own reference, "
                    "so its figure is 0.5 by construction"}  # fmt: skip


def likelihood_figures(pairs: Sequence[dict[str, Any]], chosen: Sequence[float],
                       rejected: Sequence[float]) -> dict[str, Any]:  # fmt: skip
    """Likelihood accuracy overall and per fault, and per fault the median log-probability gap.

    The gap, log p(chosen|x) - log p(rejected|x) in nats, says by how much a fault is won or lost:
    an accuracy of 0.0 on curt pairs reads the same whether the curt reply is 2 nats or 80 nats
    likelier, and training moves the gap long before it flips the sign.
    """
    import statistics

    accuracy: dict[str, list[bool]] = {}
    gaps: dict[str, list[float]] = {}
    for pair, c, r in zip(pairs, chosen, rejected, strict=True):
        fault = str(pair.get("fault", "-"))
        accuracy.setdefault(fault, []).append(c > r)
        gaps.setdefault(fault, []).append(c - r)
    return {"likelihood_accuracy": sum(sum(v) for v in accuracy.values()) / len(pairs),
            "likelihood_accuracy_by_fault": {f: sum(v) / len(v) for f, v in sorted(accuracy.items())},
            "median_logprob_gap_by_fault": {f: statistics.median(v) for f, v in sorted(gaps.items())}}  # fmt: skip


def preference_eval(pairs: Sequence[dict[str, Any]], adapter: Path | None = None, model: str | None = None,
                    beta: float = 0.1, max_length: int | None = None,
                    on_sequences: Callable[[int], None] | None = None, loaded: tuple[Any, Any, bool] | None = None) -> dict[str, Any]:  # fmt: skip
    """Likelihood accuracy on the pairs (overall and per fault), the truncated share, and the diagnostic."""
    from stage4_finetune_align.lengths import fit_max_length, length_report, pair_lengths

    if not pairs:
        raise BadInput("no pairs to evaluate")
    policy, tokenizer, has_adapter = loaded or load_for_eval(adapter, model or DEFAULT_CHAT_MODEL)
    lengths = pair_lengths(tokenizer, pairs)
    max_length = max_length or adapter_max_length(adapter) or fit_max_length(lengths)
    chosen, rejected = pair_logprobs(policy, tokenizer, pairs, max_length, on_sequences)
    if has_adapter:
        with policy.disable_adapter():
            reference = pair_logprobs(policy, tokenizer, pairs, max_length)
    else:
        reference = (chosen, rejected)
    return {"n": len(pairs), "adapter": str(adapter) if adapter else None,
            **likelihood_figures(pairs, chosen.tolist(), rejected.tolist()),
            "lengths": length_report(lengths, max_length),
            "training_diagnostic": implicit_reward_diagnostic((chosen, rejected), reference, beta)}  # fmt: skip


def evaluate_model(adapter: Path | None, model: str, pairs: Sequence[dict[str, Any]],
                   prompts: Sequence[list[dict[str, str]]], max_new_tokens: int, beta: float = 0.1,
                   max_length: int | None = None, on_sequences: Callable[[int], None] | None = None,
                   on_reply: Callable[[], None] | None = None) -> dict[str, Any]:  # fmt: skip
    """`eval --json` for a model in this process: the pairs figures, then the generation block."""
    import time

    from stage4_finetune_align.generation import generate_ids, generation_eval

    loaded = load_for_eval(adapter, model)
    start = time.perf_counter()
    result = {
        "model": model,
        **preference_eval(pairs, adapter, model, beta, max_length, on_sequences, loaded),
    }
    result["pairs_seconds"] = time.perf_counter() - start
    if prompts:
        start = time.perf_counter()
        ids = generate_ids(loaded[0], loaded[1], prompts, max_new_tokens, on_reply=on_reply)
        replies = [loaded[1].decode(reply, skip_special_tokens=True).strip() for reply in ids]
        finished = [len(reply) < max_new_tokens for reply in ids]
        result["generation"] = {**generation_eval(replies, prompts, max_new_tokens, finished),
                                "seconds": time.perf_counter() - start}  # fmt: skip
    return result


def evaluate_served(base_url: str, served_name: str | None, api_key: str | None,
                    prompts: Sequence[list[dict[str, str]]], max_new_tokens: int,
                    on_reply: Callable[[], None] | None = None) -> dict[str, Any]:  # fmt: skip
    """`eval --base-url`: the generation block through an OpenAI-compatible server (no log-probs there)."""
    import time

    from shared.chat import OpenAIChatModel
    from stage4_finetune_align.generation import first_served_model, generation_eval, served_generation

    name = served_name or first_served_model(base_url, api_key)
    start = time.perf_counter()
    replies, finished = served_generation(OpenAIChatModel(name, base_url, api_key), prompts, max_new_tokens,
                                          on_reply=on_reply)  # fmt: skip
    return {"model": name, "base_url": base_url, "likelihood_accuracy": None,
            "note": "through a server: replies only (the pairs figures need the model's log-probabilities in-process)",
            "generation": {**generation_eval(replies, prompts, max_new_tokens, finished),
                           "seconds": time.perf_counter() - start}}  # fmt: skip
