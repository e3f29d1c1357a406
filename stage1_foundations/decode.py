"""The capstone: a decode loop written by hand, with and without a KV cache.

`model.generate` hides a loop. Here it is in the open:

    ids = prompt
    repeat until EOS, a stop string, or max_new_tokens:
        logits = model(ids).logits[-1]          # forward pass: a distribution over the vocabulary
        next   = sample(logits)                 # greedy, temperature, top-k, top-p ... (sampling.py)
        ids    = ids + [next]

**Without a cache** every step runs the whole sequence through the model again, so step t costs
O(t) and a generation of n tokens costs O(n^2). But the keys and values that attention computed
for earlier positions never change (the causal mask means position i never looks at later ones).
**The KV cache** keeps them: after one *prefill* pass over the prompt, each step feeds only the new
token, with `past_key_values` holding every layer's keys and values so far, and costs O(1) in
model work (attention still reads the O(t) cache). That is the whole trick behind fast decoding, and
behind the memory bill of serving: the cache grows with every token of every concurrent request.

Streaming is decoding with the text handed out as it grows. The subtle part is detokenization:
one token can be half of a multi-byte character, and a stop string can span two tokens, so we
decode all new ids each step and only release text that can no longer change.

The same loop drives two engines, because both speak Transformers' calling convention
(`model(input_ids, past_key_values, use_cache, logits_to_keep) -> .logits, .past_key_values`):
Transformers' `LlamaForCausalLM`, whose `DynamicCache` grows by concatenation, and the hand-written
model of `model.py`, whose static cache (`kv_cache.py`) is allocated once for the prompt plus the
token budget (`new_cache`). Its greedy output equals `model.generate(do_sample=False)` token for
token on both engines, with the cache and without; the tests check it. `batch.py` runs the same
idea over several prompts at once.

    python -m stage1_foundations generate --chat --stream "Write a haiku about the sea."
    python -m stage1_foundations generate --engine scratch --chat --stream "Write a haiku about the sea."
    python -m stage1_foundations generate --no-cache --json "The capital of France is"
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from stage1_foundations.sampling import SamplingConfig, sample_next_token


@dataclass
class DecodeConfig:
    max_new_tokens: int = 64
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    use_cache: bool = True
    stop: Sequence[str] = ()
    seed: int | None = None
    ignore_eos: bool = False  # benchmarks want a fixed number of tokens

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclass
class DecodeResult:
    text: str
    token_ids: list[int]  # the new tokens only
    finish_reason: str  # "eos" | "stop" | "length"
    seconds: float
    time_to_first_token_s: float

    @property
    def new_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "new_tokens": self.new_tokens, "tokens_per_second": self.tokens_per_second}


def eos_ids(model: Any, tokenizer: Any) -> set[int]:
    """Every id that ends a turn: the tokenizer's EOS and the model's generation config's (may be a
    list; the hand-written model keeps config.json's)."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if configured is None:
        configured = getattr(model.config, "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return {i for i in ids if i is not None}


def new_cache(model: Any, batch: int, capacity: int) -> Any:
    """The cache a loop starts from. The hand-written model (model.py) preallocates a static cache of
    `capacity` slots per row; for Transformers' model this is None, and its first call creates a
    `DynamicCache` that grows by concatenation."""
    make = getattr(model, "new_kv_cache", None)
    return make(batch, capacity) if make is not None else None


# --------------------------------------------------------------------------------------------
# The two ways to get the next token's logits


@torch.inference_mode()
def forward_full(model: Any, ids: torch.Tensor) -> torch.Tensor:
    """No cache: run the whole sequence (1, t) through the model; return the last logits (1, vocab)."""
    # logits_to_keep=1: only the last position's logits are needed, so skip the vocabulary
    # projection (576 x 49,152 for SmolLM2) at every other position, as `generate` does.
    return model(input_ids=ids, use_cache=False, logits_to_keep=1).logits[:, -1, :]


@torch.inference_mode()
def forward_cached(model: Any, new_ids: torch.Tensor, past_key_values: Any) -> tuple[torch.Tensor, Any]:
    """With a cache: run only the new ids (1, n) and extend `past_key_values` (on the first call, the
    prefill, None or an empty static cache). Returns the last logits (1, vocab) and the cache to pass next time."""
    # EXERCISE stage1.cached_step: call the model on new_ids only, with past_key_values and use_cache=True; return (the last position's logits (1, vocab), the new cache)
    out = model(input_ids=new_ids, past_key_values=past_key_values, use_cache=True, logits_to_keep=1)
    return out.logits[:, -1, :], out.past_key_values
    # END EXERCISE


# --------------------------------------------------------------------------------------------
# The loop


def decode_tokens(
    model: Any, tokenizer: Any, prompt_ids: Sequence[int], config: DecodeConfig
) -> Iterator[int]:
    """Yield new token ids one by one until EOS or max_new_tokens (stop strings are the caller's,
    since they live in text, not ids). The EOS id itself is not yielded."""
    assert len(prompt_ids) > 0, "the prompt must have at least one token"
    device = model.device
    generator = None
    if config.seed is not None:
        generator = torch.Generator(device=device).manual_seed(config.seed)
    stop_ids = set() if config.ignore_eos else eos_ids(model, tokenizer)
    ids = torch.tensor([list(prompt_ids)], device=device)  # (1, t): the whole sequence so far
    penalise = config.sampling.repetition_penalty != 1.0
    past = new_cache(model, 1, len(prompt_ids) + config.max_new_tokens) if config.use_cache else None

    # EXERCISE stage1.decode_loop: max_new_tokens times: get logits (forward_cached on just the newest ids, or forward_full), sample_next_token, return on a stop id, else yield and append
    next_input = ids  # the prefill feeds the whole prompt; later steps feed one token
    for _ in range(config.max_new_tokens):
        if config.use_cache:
            logits, past = forward_cached(model, next_input, past)
        else:
            logits = forward_full(model, ids)
        next_id = sample_next_token(logits, config.sampling, generator, ids if penalise else None)  # (1,)
        token = int(next_id.item())
        if token in stop_ids:
            return
        yield token
        next_input = next_id.view(1, 1)
        ids = torch.cat([ids, next_input], dim=1)
    # END EXERCISE


def _releasable(text: str, stop: Sequence[str]) -> int:
    """How many characters of `text` can be shown now: hold back a trailing partial character
    (U+FFFD from a half-decoded byte sequence) and any suffix that could start a stop string."""
    # EXERCISE stage1.stream_holdback: strip trailing U+FFFD, then cut the longest suffix that is a proper prefix of a stop string; return the length left
    end = len(text.rstrip("\ufffd"))
    for s in stop:
        for k in range(min(len(s) - 1, end), 0, -1):
            if text[:end].endswith(s[:k]):
                end -= k
                break
    return end
    # END EXERCISE


def stream_decode(
    model: Any, tokenizer: Any, prompt_ids: Sequence[int], config: DecodeConfig
) -> Iterator[str]:
    """Yield text deltas as tokens are produced. Returns (via StopIteration.value) the DecodeResult."""
    start = time.perf_counter()
    first_token_at = None
    new_ids: list[int] = []
    text, shown, finish = "", 0, "length"
    for token in decode_tokens(model, tokenizer, prompt_ids, config):
        first_token_at = first_token_at or time.perf_counter()
        new_ids.append(token)
        text = tokenizer.decode(new_ids, skip_special_tokens=True)
        hits = [i for s in config.stop if (i := text.find(s)) >= 0]
        if hits:
            text, finish = text[: min(hits)], "stop"
            break
        end = _releasable(text, config.stop)
        if end > shown:
            yield text[shown:end]
            shown = end
    else:
        if len(new_ids) < config.max_new_tokens:
            finish = "eos"
    if len(text) > shown:
        yield text[shown:]
    now = time.perf_counter()
    return DecodeResult(
        text=text,
        token_ids=new_ids,
        finish_reason=finish,
        seconds=now - start,
        time_to_first_token_s=(first_token_at or now) - start,
    )


def generate(model: Any, tokenizer: Any, prompt_ids: Sequence[int], config: DecodeConfig) -> DecodeResult:
    """Decode to the end and return the result (the same loop as streaming, with the text kept)."""
    stream = stream_decode(model, tokenizer, prompt_ids, config)
    while True:
        try:
            next(stream)
        except StopIteration as done:
            return done.value
