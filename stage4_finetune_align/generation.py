"""What the model writes: greedy replies to every held-out prompt, scored by the voice's three rules.

Preference figures say which of two given answers a model likes; a user never sees those answers.
This module measures the behaviour itself: for each held-out prompt (never trained on), the model
answers greedily with a fixed budget of new tokens, and each reply is checked against the voice:

    at most three sentences    (a reply cut off by the token budget counts its unfinished sentence)
    no blaming phrase          ("you should have", "before asking", "which the guide explains", ...)
    a concrete next step       an action ("Turn on ...", "please", "I'll check") and a specific
                               (a menu path, a quoted label, a number: "Reset it." is not concrete)

The figures: the share of replies that meet all three rules (`all_rules`, the headline), the mean
number of sentences, and the blame rate (the share with a blaming phrase). The rules are regular
expressions on purpose: crude, visible, and arguable: a learner can read them and disagree. They
were written from the training split's answers, and `rules_on_the_data` measures them on the
held-out split's own answers: how many chosen answers pass, how many curt, rambling and blaming
ones fail. That is the instrument's calibration: a rule the data's chosen answers fail caps what
any model can score, and a rule the rejected answers pass measures nothing.

Two ways to get the replies, so that the same figures can be measured on a served model:
- `generate_replies`: Transformers in this process, prompts batched with left padding (a prompt's
  padding is masked, so batching changes nothing but the order of floating-point sums);
- `served_replies`: any OpenAI-compatible server (stage 5's vLLM) through the `openai` client,
  at temperature 0, several requests in flight so the server's continuous batching has work.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

MAX_NEW_TOKENS = 128  # the longest chosen answer in the data is 84 tokens: a good reply always fits
BATCH_SIZE = 16

# Blame: the reply puts the problem on the user. Written from the training split's blaming answers
# and checked on the held-out split (`rules_on_the_data`): it catches under half of them, and no
# chosen answer; blame often hides in tone ("which the guide explains", "before assuming"), which a
# list of phrases only partly sees.
BLAME = re.compile(
    r"\b(your fault|you obviously|you should have|you didn't|you failed|user error|read the (docs|manual)"
    r"|should already know|before (asking|messaging|writing in|assuming|panicking)|you could have|which you could"
    r"|if you bother|you presumably|you must have|you were supposed to|you agreed to|you picked it|you chose"
    r"|(most|many|a lot of) (people|customers|players|users)|everyone (says|else)|people forget|you forget"
    r"|which (the|our) [\w -]+ (warns|warned|explains|tells|says|told|reminds)"
    r"|clearly (labelled|shown|written|stated)|(not hard|easy) to find|obvious place|literally says|in big letters"
    r"|more carefully|this time|actually reading|please read|without reading|honestly"
    r"|nothing to (complain|worry) about|as fine as you think|(problem|issue) with your"
    r"|you (really )?(should|need to) (have|read|check))\b",
    re.IGNORECASE,
)
# A concrete next step is an action and a specific. The action: an imperative opening a sentence or
# a clause ("Turn on ...", "..., then add ..."), a few verbs anywhere ("please", "send", "check"),
# "you can", or what the engineer will do or has done ("I'll check", "I've refunded"). The specific: where (a menu path, "Settings > Sensor"),
# what (a quoted label or command, a number, a link) or who acts next. "Reset it." has an action
# and nothing specific: curt answers fail here, which a list of verbs alone would let through.
IMPERATIVES = (
    "add apply book call cancel change charge check choose clean clear click close compare confirm connect "
    "contact create delete deploy disable download drag email enable enter follow forward freeze give go head "
    "hold install invite keep link log look make mark message move open order pair pick pin plug raise "
    "re-enter reconnect refresh reinstall reload remove reopen reply report request reset restart restore "
    "rinse roll route run schedule select send set share sign start subscribe switch tap text tick tighten "
    "try turn type unlink untick update upload use verify visit wait wear"
).split()
ACTION = re.compile(
    r"\b(please|try|go to|open|send|check|tap|click|reply|contact|you can|I will|I'll|I can|let me|tell me"
    r"|I've (\w+ )?(asked|opened|refunded|reported|escalated|added|sent|credited|reset|raised|flagged|applied"
    r"|cancelled|switched|extended|waived|restored))\b"
    rf"|(^|[.;:!?]\s+|,? then\s+|—\s+|, or\s+)({'|'.join(IMPERATIVES)})\b",
    re.IGNORECASE,
)
SPECIFIC = re.compile(
    r"\w >|\"[^\"]+\"|“[^”]+”|\d|https?://"
    r"|\b(I'll|I will|I've|I can|let me|tell me|send me|reply with|under|from your|in your|on your|with your)\b",
    re.IGNORECASE,
)


def sentences(text: str) -> int:
    return len([s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s.strip()])


def style_score(text: str) -> dict[str, Any]:
    """1/3 each: at most three sentences; no blame; a concrete next step (an action and a specific)."""
    # EXERCISE stage4.style_score: three checks (1 to 3 sentences, no BLAME match, a next step: an ACTION match and a SPECIFIC match) as booleans, plus "score": the share that hold
    checks = {"at_most_three_sentences": 0 < sentences(text) <= 3, "no_blame": not BLAME.search(text),
              "next_step": bool(ACTION.search(text)) and bool(SPECIFIC.search(text))}  # fmt: skip
    return {**checks, "score": sum(checks.values()) / len(checks)}
    # END EXERCISE


def style_figures(replies: Sequence[str], finished: Sequence[bool] | None = None) -> dict[str, Any]:
    """The generation block of `eval --json`: shares over all replies (and of those cut off by the token budget)."""
    scored = [style_score(r) for r in replies]
    n = max(1, len(scored))
    cut_off = {"cut_off_rate": sum(not f for f in finished) / n} if finished is not None else {}
    return {"prompts": len(scored), "all_rules": sum(s["score"] == 1 for s in scored) / n,
            "mean_sentences": sum(sentences(r) for r in replies) / n,
            "blame_rate": sum(not s["no_blame"] for s in scored) / n,
            "at_most_three_sentences_rate": sum(s["at_most_three_sentences"] for s in scored) / n,
            "next_step_rate": sum(s["next_step"] for s in scored) / n, **cut_off}  # fmt: skip


def generate_ids(model: Any, tokenizer: Any, prompts: Sequence[list[dict[str, str]]],
                 max_new_tokens: int = MAX_NEW_TOKENS, batch_size: int = BATCH_SIZE,
                 on_reply: Callable[[], None] | None = None) -> list[list[int]]:  # fmt: skip
    """Greedy new-token ids per prompt (up to the first end-of-sequence), in the order of `prompts`."""
    import torch

    encoded = [list(tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=False))
               for p in prompts]  # fmt: skip
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    replies: list[list[int]] = [[] for _ in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))  # similar lengths share a batch
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = max(len(encoded[i]) for i in chunk)
        # left padding: every prompt ends at the same column, where generation starts
        input_ids = torch.tensor(
            [[pad] * (width - len(encoded[i])) + encoded[i] for i in chunk]
        )  # (b, width)
        attention_mask = torch.tensor(
            [[0] * (width - len(encoded[i])) + [1] * len(encoded[i]) for i in chunk]
        )
        with torch.inference_mode():
            out = model.generate(input_ids=input_ids.to(model.device), attention_mask=attention_mask.to(model.device),
                                 max_new_tokens=max_new_tokens, do_sample=False, temperature=None, top_p=None,
                                 top_k=None, pad_token_id=pad, eos_token_id=eos)  # fmt: skip
        for row, i in enumerate(chunk):
            new = out[row, width:].tolist()
            replies[i] = (
                new[: new.index(eos)] if eos in new else new
            )  # a finished row is padded after its end
            if on_reply:
                on_reply()
    return replies


def generate_replies(model: Any, tokenizer: Any, prompts: Sequence[list[dict[str, str]]],
                     max_new_tokens: int = MAX_NEW_TOKENS, batch_size: int = BATCH_SIZE,
                     on_reply: Callable[[], None] | None = None) -> list[str]:  # fmt: skip
    """Greedy replies, in the order of `prompts`, from a model in this process."""
    ids = generate_ids(model, tokenizer, prompts, max_new_tokens, batch_size, on_reply)
    return [tokenizer.decode(reply, skip_special_tokens=True).strip() for reply in ids]


def served_generation(chat_model: Any, prompts: Sequence[list[dict[str, str]]], max_new_tokens: int = MAX_NEW_TOKENS,
                      concurrency: int = 8, on_reply: Callable[[], None] | None = None) -> tuple[list[str], list[bool]]:  # fmt: skip
    """(replies, finished) from a `shared.chat` model (an OpenAI-compatible server), several requests at a time.

    finished[i] is False when the reply ran into the token budget (finish_reason "length").
    """

    def ask(prompt: list[dict[str, str]]) -> tuple[str, bool]:
        response = chat_model.chat(prompt, max_tokens=max_new_tokens, temperature=0.0)
        if on_reply:
            on_reply()
        return response.text.strip(), response.finish_reason != "length"

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        answered = list(pool.map(ask, prompts))
    return [text for text, _ in answered], [done for _, done in answered]


def served_replies(chat_model: Any, prompts: Sequence[list[dict[str, str]]], max_new_tokens: int = MAX_NEW_TOKENS,
                   concurrency: int = 8) -> list[str]:  # fmt: skip
    return served_generation(chat_model, prompts, max_new_tokens, concurrency)[0]


def first_served_model(base_url: str, api_key: str | None = None) -> str:
    """The first model an OpenAI-compatible server lists at /v1/models."""
    import os

    import openai

    from shared.console import WorkFailed, one_line

    client = openai.OpenAI(base_url=base_url, api_key=api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY",
                           timeout=10.0, max_retries=0)  # fmt: skip
    try:
        models = [m.id for m in client.models.list()]
    except openai.OpenAIError as e:
        raise WorkFailed(
            f"could not list the models at {base_url} ({one_line(e)}); is the server running?"
        ) from None
    if not models:
        raise WorkFailed(f"the server at {base_url} serves no model")
    return models[0]


def rules_on_the_data(pairs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The rules scored on the data's own answers: the chosen ones (written to meet all three) and each fault's rejects.

    It calibrates the instrument: a share of replies meeting all three rules means little until one
    knows how the reference answers themselves score.
    """
    chosen = list(dict.fromkeys(p["chosen"][-1]["content"] for p in pairs))
    by_fault: dict[str, list[str]] = {}
    for p in pairs:
        by_fault.setdefault(str(p.get("fault", "-")), []).append(p["rejected"][-1]["content"])
    return {
        "chosen": style_figures(chosen),
        "rejected": {f: style_figures(v) for f, v in sorted(by_fault.items())},
    }


def generation_eval(replies: Sequence[str], prompts: Sequence[list[dict[str, str]]], max_new_tokens: int,
                    finished: Sequence[bool] | None = None) -> dict[str, Any]:  # fmt: skip
    figures = style_figures(replies, finished)
    figures["max_new_tokens"] = max_new_tokens
    figures["replies"] = [{"prompt": p[-1]["content"], "reply": r, **style_score(r)}
                          for p, r in zip(prompts, replies, strict=True)]  # fmt: skip
    return figures
