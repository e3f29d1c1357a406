"""Parity: how close the hand-written model is to Transformers', measured and written down.

The tests assert bounds (logits within 1e-4 on the real weights, greedy output token for token);
this command measures the actual numbers on a wider set of prompts and writes them to a report:

- **logits**: the largest absolute difference from Transformers' `LlamaForCausalLM`, per prompt,
  against both of its attention implementations: `sdpa` (Torch's fused kernel, the default) and
  `eager` (matmul, softmax, matmul, like ours). Different kernels sum in different orders, and
  float32 addition is not associative, so "equal" means "equal up to rounding".
- **greedy decoding**: how many prompts give the very same tokens as `generate(do_sample=False)`,
  with the static cache and without.
- **batches**: how many rows of a left-padded batch give the same tokens as their prompt alone, for
  both engines; a row that differs is checked for a near-tie (the two candidates' logits within
  1e-3 at the first differing token), which is the only way rounding can change a greedy choice.

    python -m stage1_foundations parity            # about 4 min on 2 CPU cores
Writes reports/stage1_parity.json.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from shared import paths
from stage1_foundations.batch import decode_batch
from stage1_foundations.decode import DecodeConfig, forward_full, generate

CHAT_PROMPTS = [
    "What is the capital of France?", "Write a haiku about the sea.", "Name three primary colors.", "hi",
    "Explain what a list comprehension is in Python.", "Give me a tip for sleeping better.",
    "What is 12 times 7?", "Translate 'good morning' into Spanish.",
    "Write one sentence about the moon.", "Why is the sky blue?", "List two fruits that are red.",
    "What does a KV cache store?", "Tell me a joke about computers.", "How many legs does a spider have?",
    "Suggest a name for a black cat.", "What is the boiling point of water in Fahrenheit?",
]  # fmt: skip
NEAR_TIE = 1e-3


def _chat(tokenizer: Any, prompt: str) -> list[int]:
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                         return_dict=False)  # fmt: skip


def _hf_greedy(model: Any, tokenizer: Any, ids: list[int], n: int) -> list[int]:
    x = torch.tensor([ids])
    with torch.inference_mode():
        out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False,
                             temperature=None, top_p=None, top_k=None, pad_token_id=tokenizer.eos_token_id)  # fmt: skip
    new = out[0, len(ids) :].tolist()
    return new[:-1] if new and new[-1] == tokenizer.eos_token_id else new


def row_agreement(
    model: Any, prompt: list[int], batched: list[int], alone: list[int], eos_id: int | None = None
) -> str:
    """'same', 'near-tie' (differs first where two logits were within NEAR_TIE) or 'different'.

    A row that stopped earlier than the other differs where it chose `eos_id`: that too is a choice
    between two logits, and a near tie between EOS and the other token is a near tie like any other.
    """
    if batched == alone:
        return "same"
    k = next((i for i, (a, b) in enumerate(zip(batched, alone, strict=False)) if a != b), None)
    if k is None:  # one is a prefix of the other: a stop at a different step
        if eos_id is None:
            return "different"
        k = min(len(batched), len(alone))
        batched, alone = (row if len(row) > k else [*row, eos_id] for row in (batched, alone))
    logits = forward_full(model, torch.tensor([prompt + alone[:k]]))[0]
    return "near-tie" if abs((logits[alone[k]] - logits[batched[k]]).item()) < NEAR_TIE else "different"


def measure(hf_path: Path, scratch: Any, tokenizer: Any, new_tokens: int = 32, chat_prompts: list[str] = CHAT_PROMPTS,
            step: Callable[[str], None] = lambda _: None) -> dict[str, Any]:  # fmt: skip
    from pydoc_data.topics import topics

    from transformers import AutoModelForCausalLM

    references = {impl: AutoModelForCausalLM.from_pretrained(hf_path, dtype=torch.float32, attn_implementation=impl).eval()
                  for impl in ("sdpa", "eager")}  # fmt: skip
    long_ids = tokenizer(topics["try"] + topics["with"], add_special_tokens=False)["input_ids"][:700]
    logit_prompts = {"plain 'The capital of France is'": tokenizer("The capital of France is")["input_ids"],
                     f"chat {chat_prompts[0]!r}": _chat(tokenizer, chat_prompts[0]),
                     "700 tokens of the Python reference": long_ids}  # fmt: skip
    logits = []
    for name, ids in logit_prompts.items():
        step(f"logits: {name}")
        x = torch.tensor([ids])
        ours = scratch(x).logits
        row = {"prompt": name, "tokens": len(ids)}
        for impl, reference in references.items():
            with torch.inference_mode():
                theirs = reference(input_ids=x).logits
            row[f"max_abs_diff_vs_{impl}"] = (ours - theirs).abs().max().item()
            row[f"argmax_agreement_vs_{impl}"] = (ours.argmax(-1) == theirs.argmax(-1)).float().mean().item()
        logits.append(row)

    hf = references["sdpa"]
    prompts = [_chat(tokenizer, p) for p in chat_prompts]
    greedy = {"prompts": len(prompts), "new_tokens": new_tokens, "same_cached": 0, "same_uncached": 0,
              "uncached_prompts": min(4, len(prompts))}  # fmt: skip
    for i, ids in enumerate(prompts):
        step(f"greedy {i + 1}/{len(prompts)}")
        reference = _hf_greedy(hf, tokenizer, ids, new_tokens)
        greedy["same_cached"] += (
            generate(scratch, tokenizer, ids, DecodeConfig(max_new_tokens=new_tokens)).token_ids == reference
        )
        if i < greedy["uncached_prompts"]:  # the uncached loop is O(n^2): a few prompts say enough
            uncached = generate(
                scratch, tokenizer, ids, DecodeConfig(max_new_tokens=new_tokens, use_cache=False)
            )
            greedy["same_uncached"] += uncached.token_ids == reference

    batches = []
    for engine, model in (("hf", hf), ("scratch", scratch)):
        step(f"batch of {len(prompts)}: {engine}")
        config = DecodeConfig(max_new_tokens=new_tokens)
        rows = decode_batch(model, tokenizer, prompts, config)
        outcome = [row_agreement(model, p, r.token_ids, generate(model, tokenizer, p, config).token_ids,
                                 tokenizer.eos_token_id)
                   for p, r in zip(prompts, rows, strict=True)]  # fmt: skip
        batches.append(
            {
                "engine": engine,
                "rows": len(rows),
                **{k: outcome.count(k) for k in ("same", "near-tie", "different")},
            }
        )
    return {"model": str(hf_path), "dtype": "float32", "logits": logits, "greedy": greedy, "batch": batches}


def write_report(report: dict[str, Any], name: str = "stage1_parity") -> Path:
    reports = paths.ensure(paths.reports_dir())
    return paths.atomic_write_text(reports / f"{name}.json", json.dumps(report, indent=2) + "\n")
