"""Did training change what the model prefers, on pairs it never saw?

For each held-out pair we compute the log-probability of the chosen and of the rejected answer
given the prompt (the chat template applied, the answer's tokens only), under the model:

    preference accuracy   DPO's implicit reward r = beta * (log pi - log ref): the share of pairs
                          where r(chosen) > r(rejected), a tie counting half. The base model *is*
                          the reference, so every pair ties and its figure is 0.5: no preference
    mean margin           the mean of r(chosen) - r(rejected): how far the policy moved
    likelihood accuracy   share of pairs where log p(chosen) > log p(rejected) outright, with no
                          reference: what the model would pick on its own. A stricter test, since
                          the base's own likes (short answers have higher total log-probability)
                          still weigh in

A style score makes "the voice" checkable on generations: at most three sentences, no blaming
phrase, a concrete next step. It is crude on purpose: a learner can read it and disagree.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from shared.console import BadInput

BLAME = re.compile(r"\b(your fault|you obviously|you should have|you didn't|you failed|user error|read the (docs|manual))\b",
                   re.IGNORECASE)  # fmt: skip
NEXT_STEP = re.compile(
    r"\b(please|try|go to|open|send|check|tap|click|reply|contact|I will|I'll|let me)\b", re.IGNORECASE
)


def sentences(text: str) -> int:
    return len([s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s.strip()])


def style_score(text: str) -> dict[str, Any]:
    """1/3 each: at most three sentences; no blame; a concrete next step."""
    # EXERCISE stage4.style_score: three checks (1 to 3 sentences, no BLAME match, a NEXT_STEP match) as booleans, plus "score": the share that hold
    checks = {"at_most_three_sentences": 0 < sentences(text) <= 3, "no_blame": not BLAME.search(text),
              "next_step": bool(NEXT_STEP.search(text))}  # fmt: skip
    return {**checks, "score": sum(checks.values()) / len(checks)}
    # END EXERCISE


def implicit_preference(
    chosen: float, rejected: float, ref_chosen: float, ref_rejected: float, beta: float = 0.1
) -> tuple[float, float]:
    """(margin, credit) of one pair from its answers' log-probabilities under the policy and the reference.

    DPO's implicit reward of an answer is r(y) = beta * (log pi(y|x) - log ref(y|x)); the margin is
    r(chosen) - r(rejected), and the pair counts 1 toward preference accuracy when the margin is
    positive, 0.5 for a tie, 0 otherwise.

    Example: implicit_preference(-10.0, -12.0, -11.0, -11.0, beta=0.5) -> (1.0, 1.0)
    """
    # EXERCISE stage4.implicit_reward: r(y) = beta * (policy log-prob - reference log-prob); margin = r(chosen) - r(rejected); credit 1.0, 0.5 or 0.0 for margin >, == or < 0; return (margin, credit)
    margin = beta * ((chosen - ref_chosen) - (rejected - ref_rejected))
    credit = 1.0 if margin > 0 else 0.5 if margin == 0 else 0.0
    return margin, credit
    # END EXERCISE


def answer_logprob(
    model: Any, tokenizer: Any, prompt: list[dict[str, str]], answer: list[dict[str, str]]
) -> float:
    """Sum of log p(answer tokens | prompt) through the chat template."""
    import torch

    prompt_ids = tokenizer.apply_chat_template(
        prompt, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    full_ids = tokenizer.apply_chat_template(prompt + answer, tokenize=True, return_dict=False)
    if list(full_ids[: len(prompt_ids)]) != list(prompt_ids):
        raise ValueError("the chat template does not extend the prompt when the answer is added")
    ids = torch.tensor([list(full_ids)], device=model.device)
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[0, :-1].float()
    targets = ids[0, 1:]
    logprobs = logits.log_softmax(-1).gather(1, targets[:, None])[:, 0]
    return float(logprobs[len(prompt_ids) - 1 :].sum())


def load_for_eval(adapter: Path | None, model: str) -> tuple[Any, Any, bool]:
    from stage4_finetune_align.dpo import load_base

    base, tokenizer = load_base(model, "none")
    if adapter is None:
        return base.eval(), tokenizer, False
    from peft import PeftModel

    adapter = Path(adapter)
    if not (adapter / "adapter_config.json").is_file():
        raise BadInput(f"no LoRA adapter at {adapter} (adapter_config.json missing)")
    return PeftModel.from_pretrained(base, str(adapter)).eval(), tokenizer, True


def preference_eval(pairs: Sequence[dict[str, Any]], adapter: Path | None = None, model: str | None = None,
                    beta: float = 0.1, on_pair: Callable[[], None] | None = None) -> dict[str, Any]:  # fmt: skip
    from shared.models import DEFAULT_CHAT_MODEL

    if not pairs:
        raise BadInput("no pairs to evaluate")
    policy, tokenizer, has_adapter = load_for_eval(adapter, model or DEFAULT_CHAT_MODEL)
    likelier, preferred, margins = 0, 0.0, []
    for pair in pairs:
        chosen = answer_logprob(policy, tokenizer, pair["prompt"], pair["chosen"])
        rejected = answer_logprob(policy, tokenizer, pair["prompt"], pair["rejected"])
        if has_adapter:
            with policy.disable_adapter():
                ref_chosen = answer_logprob(policy, tokenizer, pair["prompt"], pair["chosen"])
                ref_rejected = answer_logprob(policy, tokenizer, pair["prompt"], pair["rejected"])
        else:
            ref_chosen, ref_rejected = chosen, rejected
        margin, credit = implicit_preference(chosen, rejected, ref_chosen, ref_rejected, beta)
        likelier += chosen > rejected
        preferred += credit
        margins.append(margin)
        if on_pair:
            on_pair()
    n = len(pairs)
    return {"n": n, "preference_accuracy": preferred / n, "mean_margin": sum(margins) / n,
            "likelihood_accuracy": likelier / n, "adapter": str(adapter) if adapter else None}  # fmt: skip
