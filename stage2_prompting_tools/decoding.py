"""Grammar-constrained greedy decoding, with jump-forward: the decode loop that makes calls valid.

At each step the grammar matcher (xgrammar) says which tokens may come next; every other token's
logit is set to -inf before the argmax, so the output can only be a string the grammar accepts:

    matcher = GrammarMatcher(compiled)              # a pushdown automaton over the grammar
    loop:
        logits = model(last tokens, kv_cache)       # (vocab,)
        matcher.fill_next_token_bitmask(mask)       # (vocab / 32,) int32: bit i = token i allowed
        apply_token_bitmask_inplace(logits, mask)   # disallowed -> -inf
        token = argmax(logits); matcher.accept_token(token)

**Jump-forward.** Much of a call is not a choice at all: after `<tool_call>\\n{"name": "calcul`
the grammar allows exactly one continuation, `ator", "arguments": {"expression": "`. The matcher
can say so (`find_jump_forward_string`), and then those tokens are appended without asking the
model, one forward pass for all of them instead of one per token. About half of a call's tokens
are forced like this. SGLang does the same; the catch, which it also has, is that the forced text
is tokenized on its own, which can differ from how the model would have split it.

`jump_forward=False` gives the plain loop, which must match Transformers' own `generate` with
xgrammar's logits processor token for token (tests/stage2/test_decoding.py checks it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Decoded:
    tokens: list[int]  # the generated ids (forced ones included)
    forward_passes: int  # model calls it took
    forced: int  # tokens appended by jump-forward, without a model call
    finish_reason: str  # "stop" (grammar complete / EOS) | "length"


@torch.inference_mode()
def constrained_greedy(model: Any, tokenizer: Any, prompt_ids: list[int], compiled: Any, max_new_tokens: int,
                       jump_forward: bool = True, stop_when_complete: bool = True) -> Decoded:  # fmt: skip
    """Greedy decoding under a compiled xgrammar grammar.

    It ends at end-of-sequence, at `max_new_tokens`, or (`stop_when_complete`, for a grammar after
    whose end nothing but end-of-sequence may follow, such as one call) as soon as it is complete.
    """
    import xgrammar as xgr

    matcher = xgr.GrammarMatcher(compiled)
    vocab = compiled.tokenizer_info.vocab_size
    mask = xgr.allocate_token_bitmask(1, vocab)
    device = model.device
    feed, past, out = list(prompt_ids), None, Decoded([], 0, 0, "length")
    # EXERCISE stage2.constrained_decoding: until the matcher is terminated or max_new_tokens (or complete, with stop_when_complete): (jump-forward: if find_jump_forward_string() gives text, accept its tokens and queue them, no model call); else run the model on the queued tokens with the KV cache, mask the last logits with the bitmask, take the argmax, accept it, queue it
    while len(out.tokens) < max_new_tokens and not matcher.is_terminated():
        if stop_when_complete and matcher.is_completed():
            break  # the call is closed; only end-of-sequence could follow, no need to ask the model
        forced = matcher.find_jump_forward_string() if jump_forward else ""
        if forced:
            ids = tokenizer.encode(forced, add_special_tokens=False)[: max_new_tokens - len(out.tokens)]
            accepted = 0
            for token in ids:
                if not matcher.accept_token(token):
                    break  # the split differs from the grammar's: let the model take it from here
                accepted += 1
            if accepted:
                feed += ids[:accepted]
                out.tokens += ids[:accepted]
                out.forced += accepted
                continue
        step = model(input_ids=torch.tensor([feed], device=device), past_key_values=past, use_cache=True)
        out.forward_passes += 1
        past = step.past_key_values
        logits = step.logits[:, -1, :vocab].float()  # (1, vocab): the model's row may be padded wider
        matcher.fill_next_token_bitmask(mask)
        xgr.apply_token_bitmask_inplace(logits, mask.to(logits.device))
        token = int(logits.argmax(-1))
        assert matcher.accept_token(token), "the mask allowed a token the matcher then refused"
        out.tokens.append(token)
        feed = [token]
    # END EXERCISE
    if matcher.is_terminated() or matcher.is_completed():
        out.finish_reason = "stop"
    if out.tokens and out.tokens[-1] == tokenizer.eos_token_id:
        out.tokens.pop()
    return out
