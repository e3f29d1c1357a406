"""Tokenization: the model never sees text, only integer ids.

A tokenizer splits text into pieces from a fixed vocabulary (SmolLM2's has 49,152) and maps each
piece to an id. Byte-level BPE, the scheme GPT-2 introduced and SmolLM2 uses, starts from bytes and
merges frequent pairs, so any string can be encoded and common words become one token (" Paris")
while rare ones split (" Lovelace" -> " Lo", "vel", "ace"). Three things trip people up:

- **Spaces belong to tokens.** "Paris" and " Paris" are different ids; the `Ġ` you see in raw
  tokens is the byte-level BPE spelling of a leading space.
- **Special tokens** (`<|im_start|>`, `<|im_end|>`, `<|endoftext|>`) are single ids that mark
  structure. The model learned to end its turn by emitting `<|im_end|>`: that is its EOS.
- **Chat models see a template, not a list of messages.** `apply_chat_template` renders the
  conversation into one string with the special tokens in the exact layout the model was trained
  on, adds a default system prompt if the template says so, and with `add_generation_prompt=True`
  ends with `<|im_start|>assistant\\n` so the model's next tokens are its answer.

Offsets map every token back to the characters it covers, which is how highlighters and
citation tools point at text. A character outside the common set ('☕' is three bytes) may be split
over several byte tokens, which then all report the same character span. Decoding the ids gives
back the original string exactly.

    python -m stage1_foundations tokenize "The capital of France is Paris."
    python -m stage1_foundations tokenize --chat "What is the capital of France?"
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

Message = dict[str, Any]


@dataclass
class TokenPiece:
    id: int
    token: str  # the vocabulary entry, in the tokenizer's own spelling ("Ġcapital")
    text: str  # the characters of the input it covers (" capital")
    start: int
    end: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def tokenize(tokenizer: Any, text: str, add_special_tokens: bool = False) -> list[TokenPiece]:
    """Text -> tokens with ids and character offsets.

    Example: "Hello world" -> [TokenPiece(id=19556, token='Hello', text='Hello', start=0, end=5),
                               TokenPiece(id=905, token='Ġworld', text=' world', start=5, end=11)]
    """
    encoding = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    ids = encoding["input_ids"]
    tokens = tokenizer.convert_ids_to_tokens(ids)
    return [
        TokenPiece(id=i, token=t, text=text[s:e], start=s, end=e)
        for i, t, (s, e) in zip(ids, tokens, encoding["offset_mapping"], strict=True)
    ]


def render_chat(
    tokenizer: Any, messages: list[Message], add_generation_prompt: bool = True
) -> tuple[str, list[int]]:
    """The exact string and ids a chat model sees for a conversation."""
    text = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    ids = tokenizer.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=add_generation_prompt, return_dict=False
    )
    return text, list(ids)


def special_tokens(tokenizer: Any) -> dict[str, int]:
    """Each special token and its id, e.g. {'<|im_end|>': 2, ...}."""
    return {tok: tokenizer.convert_tokens_to_ids(tok) for tok in tokenizer.all_special_tokens}


def round_trip(tokenizer: Any, text: str) -> bool:
    """Decoding the ids of a text gives the text back."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer.decode(ids) == text
