"""Prompts as code: system messages and few-shot examples you can version, vary and measure.

A prompt is a function from an input to the messages the model sees. Written as code it can be
compared like any other design choice, on held-out data, instead of argued about. The choices here:

    system message   what the task is and which answers are allowed
    shots            0 (zero-shot) or k labelled examples
    placement        "turns": each example as a user message and an assistant reply, the way the
                     model was trained to read conversations; "inline": all examples pasted into
                     the system message as text
    selection        "fixed": the same k examples for every input (one per label, balanced);
                     "similar": the k training examples closest to the input by embedding

The task: classify customer-support messages into six intents (data/intents.jsonl: 120 train,
42 dev, 48 test). The model does not generate the label; we read its preference directly: the
log-probability of each label *as its whole reply*, the label followed by the end-of-turn token
`<|im_end|>`, one short forward pass per label over a shared, cached prompt. (Without the end token
the score is that of the reply *starting* with the label: a label that opens a likelier longer
reply, "billing" in "billing issue: ...", would collect that reply's probability too.) That makes the answer always one of the six, and makes
the comparison about the prompt, not about output parsing.

    python -m stage2_prompting_tools prompts --split dev
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

INTENTS_PATH = Path(__file__).parent / "data" / "intents.jsonl"
INTENTS = ("billing", "account_access", "technical_issue", "shipping", "cancellation", "feature_request")
SYSTEM = ("You sort customer-support messages. Reply with exactly one intent from this list: "
          + ", ".join(INTENTS) + ".")  # fmt: skip


def load_intents(split: str | None = None, path: Path = INTENTS_PATH) -> list[dict[str, str]]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if split is None or r["split"] == split]


@dataclass(frozen=True)
class PromptConfig:
    shots: int = 0
    placement: str = "turns"  # "turns" | "inline"
    selection: str = "fixed"  # "fixed" | "similar"

    def __post_init__(self) -> None:
        if self.shots < 0:
            raise ValueError(f"shots must be >= 0, got {self.shots}")
        if self.placement not in ("turns", "inline"):
            raise ValueError(f"placement must be 'turns' or 'inline', got {self.placement!r}")
        if self.selection not in ("fixed", "similar"):
            raise ValueError(f"selection must be 'fixed' or 'similar', got {self.selection!r}")

    @property
    def label(self) -> str:
        return "zero-shot" if self.shots == 0 else f"{self.shots}-shot, {self.selection}, {self.placement}"


def fixed_examples(train: Sequence[dict[str, str]], k: int) -> list[dict[str, str]]:
    """k examples cycling through the labels, so no label is favoured by the examples."""
    by_label = {label: [r for r in train if r["intent"] == label] for label in INTENTS}
    return [by_label[INTENTS[i % len(INTENTS)]][i // len(INTENTS)] for i in range(k)]


def build_messages(
    text: str, config: PromptConfig, examples: Sequence[dict[str, str]]
) -> list[dict[str, str]]:
    """The messages for one input under one prompt design."""
    # EXERCISE stage2.few_shot_placement: no shots: system + user; inline: the examples as 'Message: ...\nIntent: ...' blocks in the system message; turns: a user/assistant pair per example before the user
    if config.shots == 0 or not examples:
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]
    if config.placement == "inline":
        shown = "\n\n".join(f"Message: {e['text']}\nIntent: {e['intent']}" for e in examples)
        return [{"role": "system", "content": f"{SYSTEM}\n\nExamples:\n\n{shown}"},
                {"role": "user", "content": text}]  # fmt: skip
    turns = [m for e in examples for m in ({"role": "user", "content": e["text"]},
                                           {"role": "assistant", "content": e["intent"]})]  # fmt: skip
    return [{"role": "system", "content": SYSTEM}, *turns, {"role": "user", "content": text}]
    # END EXERCISE


@torch.inference_mode()
def continuation_logprobs(
    model: Any,
    tokenizer: Any,
    prompt_ids: list[int],
    continuations: Sequence[str],
    end_ids: Sequence[int] = (),
) -> list[float]:
    """log P(continuation + end | prompt) for each continuation, reusing one prefill of the prompt.

    Example: prompt "...<|im_start|>assistant\\n", continuations ["billing", "shipping"], end [<|im_end|>]
             -> [-0.7, -2.3]
    """
    device = model.device
    prefill = model(input_ids=torch.tensor([prompt_ids], device=device), use_cache=True)
    first = prefill.logits[0, -1:].float()
    scores = []
    for text in continuations:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"] + list(end_ids)
        logits = first
        if len(ids) > 1:  # feed all but the last token after a private copy of the cache
            past = copy.deepcopy(prefill.past_key_values)
            step = model(input_ids=torch.tensor([ids[:-1]], device=device), past_key_values=past)
            logits = torch.cat([first, step.logits[0].float()])
        logprobs = logits.log_softmax(-1)
        scores.append(float(logprobs[torch.arange(len(ids)), torch.tensor(ids)].sum()))
    return scores


class IntentClassifier:
    """Pick the intent the model finds likeliest as its reply, under a given prompt design."""

    def __init__(self, chat_model: Any, train: Sequence[dict[str, str]], config: PromptConfig):
        self.chat_model, self.train, self.config = chat_model, list(train), config
        self._train_vectors = None

    def examples_for(self, text: str) -> list[dict[str, str]]:
        if self.config.shots == 0:
            return []
        if self.config.selection == "fixed":
            return fixed_examples(self.train, self.config.shots)
        encoder = _encoder()
        if self._train_vectors is None:
            self._train_vectors = encoder.encode([r["text"] for r in self.train], normalize_embeddings=True)
        query = encoder.encode([text], normalize_embeddings=True)[0]
        best = (self._train_vectors @ query).argsort()[::-1][: self.config.shots]
        return [self.train[i] for i in reversed(best)]  # the most similar example sits nearest the input

    def scores(self, text: str) -> dict[str, float]:
        messages = build_messages(text, self.config, self.examples_for(text))
        prompt_ids = self.chat_model.encode(messages)
        tokenizer = self.chat_model.tokenizer
        values = continuation_logprobs(
            self.chat_model.model,
            tokenizer,
            prompt_ids,
            INTENTS,
            end_ids=[tokenizer.convert_tokens_to_ids("<|im_end|>")],
        )  # the whole reply
        return dict(zip(INTENTS, values, strict=True))

    def __call__(self, text: str) -> str:
        scores = self.scores(text)
        return max(scores, key=scores.get)


def _encoder() -> Any:
    from shared.models import load_embedder

    return load_embedder()


DESIGNS = (PromptConfig(0), PromptConfig(6, "turns", "fixed"), PromptConfig(6, "inline", "fixed"),
           PromptConfig(6, "turns", "similar"))  # fmt: skip


def accuracy(classify: Callable[[str], str], rows: Sequence[dict[str, str]],
             on_row: Callable[[], None] | None = None) -> float:  # fmt: skip
    correct = 0
    for row in rows:
        correct += classify(row["text"]) == row["intent"]
        if on_row:
            on_row()
    return correct / len(rows)


def compare_designs(chat_model: Any, split: str = "dev", designs: Sequence[PromptConfig] = DESIGNS,
                    on_row: Callable[[], None] | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Accuracy of each prompt design on a split (choose designs on dev; report test once)."""
    train, rows = load_intents("train"), load_intents(split)
    return [{"design": d.label, "shots": d.shots, "placement": d.placement, "selection": d.selection,
             "split": split, "n": len(rows), "accuracy": accuracy(IntentClassifier(chat_model, train, d), rows, on_row)}
            for d in designs]  # fmt: skip
