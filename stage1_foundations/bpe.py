"""Byte-level BPE by hand: SmolLM2's own tokenizer, rebuilt from its `tokenizer.json`, and trained.

`tokenization.py` called the tokenizer; this file is the tokenizer. Byte-level BPE (GPT-2's scheme,
SmolLM2's too) turns text into ids in four steps, each read from `tokenizer.json`:

1. **Special tokens** (`added_tokens`) are cut out of the text first and become one id each, so
   `<|im_end|>` inside a string is the end-of-turn token, never "<", "|", "im", ...
2. **Pre-tokenization** (`pre_tokenizer`) splits the rest into chunks by a regular expression, so
   that merges never cross a word boundary. GPT-2's pattern keeps a leading space with its word,
   and separates letters, numbers and punctuation:

       'Hello  world42!' -> ['Hello', ' ', ' world', '42', '!']

3. **Bytes as characters.** Each chunk becomes its UTF-8 bytes, and each byte is shown as one
   printable character (`bytes_to_unicode`): bytes that are printable stand for themselves, the others
   (space, newline, control bytes) are shifted past 255, which is why a space shows as `Ġ` (U+0120)
   and a newline as `Ċ`. Every string is some sequence of the 256 bytes, so nothing is ever unknown.
4. **Merges.** `model.merges` is a ranked list of pairs, learned in training: `Ġ t`, `Ġ a`, `i n`,
   ... Starting from single bytes, repeatedly merge the adjacent pair with the *lowest rank* (the
   one learned earliest), until no adjacent pair is in the list. The pieces are looked up in
   `model.vocab` for their ids.

Decoding runs backwards: ids -> pieces -> characters -> bytes -> UTF-8. One id may hold half of a
multi-byte character; only whole sequences decode cleanly, which is why streaming holds text back.

**Where merges come from.** Training (`train_bpe`) starts from bytes and, again and again, counts
every adjacent pair in the corpus and merges the most frequent one into a new token. Each merge
shortens the text: after a few hundred merges on the Python reference, common fragments (" the",
"ing", " self") are single tokens and a byte of text costs noticeably fewer tokens; SmolLM2's
48,900 merges go much further. `compression` measures it: bytes of text per token.

The tests check that `BPETokenizer` gives the very ids of the Transformers tokenizer on the whole
Python Language Reference and on edge cases (runs of spaces, tabs and newlines, digits, accents,
emoji, special tokens inside text), and that decode(encode(s)) == s.

    python -m stage1_foundations tokenize --engine scratch "Ada Lovelace wrote the first program."
    python -m stage1_foundations train-bpe --merges 300
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import regex

# GPT-2's split pattern, which Hugging Face's ByteLevel pre-tokenizer applies when use_regex=true:
# contractions, an optional space + letters, an optional space + digits, an optional space + other
# symbols, then whitespace (a run of spaces gives its last space to the word after it).
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


@functools.cache
def bytes_to_unicode() -> dict[int, str]:
    """Each of the 256 bytes -> one printable character. Printable Latin-1 bytes map to themselves;
    the other 68 (controls, space, ...) to 256, 257, ... in order.

    Example: ord('A') -> 'A', ord(' ') -> 'Ġ', ord('\\n') -> 'Ċ'
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table, shifted = {}, 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + shifted)
            shifted += 1
    return table


# --------------------------------------------------------------------------------------------
# Pre-tokenization, as declared by tokenizer.json


def _split(pattern: str, text: str, invert: bool = False) -> list[str]:
    """The pieces of text: the regex's matches (and, Hugging Face's 'Isolated' behaviour, the text
    between matches as pieces of their own), in order; with invert, the text between matches only."""
    pieces, end = [], 0
    for match in regex.finditer(pattern, text):
        if match.start() > end:
            pieces.append(text[end : match.start()])
        if not invert and match.end() > match.start():
            pieces.append(match.group())
        end = match.end()
    if end < len(text):
        pieces.append(text[end:])
    return pieces


def pre_tokenize(spec: dict[str, Any] | None, text: str) -> list[str]:
    """Apply a tokenizer.json `pre_tokenizer` to text: ByteLevel, Split, Digits, or a Sequence of them."""
    if spec is None:
        return [text]
    kind = spec["type"]
    if kind == "Sequence":
        pieces = [text]
        for step in spec["pretokenizers"]:
            pieces = [p for piece in pieces for p in pre_tokenize(step, piece)]
        return pieces
    if kind == "ByteLevel":
        if spec.get("add_prefix_space") and not text.startswith(" "):
            text = " " + text
        return _split(GPT2_PATTERN, text) if spec.get("use_regex", True) else [text]
    if kind == "Digits":
        return _split(r"\p{N}" if spec.get("individual_digits") else r"\p{N}+", text)
    if kind == "Split" and spec.get("behavior") == "Isolated":
        pattern = spec["pattern"]
        return _split(pattern["Regex"] if "Regex" in pattern else regex.escape(pattern["String"]), text,
                      invert=bool(spec.get("invert")))  # fmt: skip
    raise ValueError(f"pre_tokenizer {kind} ({spec.get('behavior', '')}) is not one this file implements")


# --------------------------------------------------------------------------------------------
# The merge loop


def merge(pieces: list[str], pair: tuple[str, str]) -> list[str]:
    """Replace every adjacent occurrence of `pair`, left to right, by the joined piece.

    Example: ['a', 'a', 'a', 'b'], ('a', 'a') -> ['aa', 'a', 'b']
    """
    out, i = [], 0
    while i < len(pieces):
        if i + 1 < len(pieces) and (pieces[i], pieces[i + 1]) == pair:
            out.append(pieces[i] + pieces[i + 1])
            i += 2
        else:
            out.append(pieces[i])
            i += 1
    return out


def apply_merges(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """BPE on one pre-token: from single byte-characters, merge the lowest-ranked adjacent pair
    until no adjacent pair has a rank. Example (SmolLM2): 'Ġcapital' -> ['Ġcapital']"""
    # EXERCISE stage1.bpe_merge: loop: among adjacent pairs of symbols, find the one with the lowest rank (stop when none has a rank); replace its occurrences with merge(); return the symbols
    while len(symbols) > 1:
        best = min(zip(symbols, symbols[1:], strict=False), key=lambda p: ranks.get(p, float("inf")))
        if best not in ranks:
            break
        symbols = merge(symbols, best)
    return symbols
    # END EXERCISE


# --------------------------------------------------------------------------------------------
# The tokenizer


@dataclass
class Encoding:
    ids: list[int]
    tokens: list[str]
    offsets: list[tuple[int, int]]  # the characters of the text each token covers


class BPETokenizer:
    """Encode and decode exactly as the Transformers tokenizer built from the same tokenizer.json."""

    def __init__(self, spec: dict[str, Any]) -> None:
        model = spec["model"]
        if model.get("type") != "BPE":
            raise ValueError(f"tokenizer.json holds a {model.get('type')} model; this file implements BPE")
        if spec.get("normalizer") is not None:
            raise ValueError(
                "tokenizer.json declares a normalizer; this file implements byte-level BPE without one"
            )
        self.vocab: dict[str, int] = model["vocab"]
        self.id_to_token = {i: t for t, i in self.vocab.items()}
        merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
        self.ranks: dict[tuple[str, str], int] = {pair: rank for rank, pair in enumerate(merges)}
        self.ignore_merges = bool(model.get("ignore_merges"))  # a chunk already in the vocab stays whole
        self.pre_tokenizer = spec.get("pre_tokenizer")
        self.special = {t["content"]: t["id"] for t in spec.get("added_tokens", [])}
        self.id_to_token.update({i: t for t, i in self.special.items()})
        self.special_ids = {t["id"] for t in spec.get("added_tokens", []) if t.get("special")}
        # longest first, so that no special token is matched as the prefix of a longer one
        names = sorted(self.special, key=len, reverse=True)
        self.special_pattern = regex.compile("|".join(regex.escape(n) for n in names)) if names else None
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self._cache: dict[str, list[str]] = {}

    @classmethod
    def from_file(cls, path: str | Path) -> BPETokenizer:
        return cls(json.loads(Path(path).read_text(encoding="utf-8")))

    @classmethod
    def from_model(cls, model: str) -> BPETokenizer:
        from shared.models import resolve

        return cls.from_file(resolve(model, kind="chat") / "tokenizer.json")

    def bpe(self, chunk: str) -> list[str]:
        """One pre-token's pieces (cached: real text repeats its words)."""
        pieces = self._cache.get(chunk)
        if pieces is None:
            symbols = "".join(self.byte_encoder[b] for b in chunk.encode("utf-8"))
            if self.ignore_merges and symbols in self.vocab:
                pieces = [symbols]
            else:
                pieces = apply_merges(list(symbols), self.ranks)
            self._cache[chunk] = pieces
        return pieces

    def _segments(self, text: str) -> Iterable[tuple[str, int, bool]]:
        """(segment, its start, is it a special token): the text cut at every special token."""
        end = 0
        for match in self.special_pattern.finditer(text) if self.special_pattern else ():
            if match.start() > end:
                yield text[end : match.start()], end, False
            yield match.group(), match.start(), True
            end = match.end()
        if end < len(text):
            yield text[end:], end, False

    def encode_with_offsets(self, text: str) -> Encoding:
        ids, tokens, offsets = [], [], []
        for segment, start, special in self._segments(text):
            if special:
                ids.append(self.special[segment])
                tokens.append(segment)
                offsets.append((start, start + len(segment)))
                continue
            for chunk in pre_tokenize(self.pre_tokenizer, segment):
                char_of_byte = [i for i, ch in enumerate(chunk) for _ in ch.encode("utf-8")]  # byte -> char
                byte = 0
                for piece in self.bpe(chunk):
                    width = len(piece)  # one character per byte
                    ids.append(self.vocab[piece])
                    tokens.append(piece)
                    offsets.append((start + char_of_byte[byte], start + char_of_byte[byte + width - 1] + 1))
                    byte += width
                start += len(chunk)
        return Encoding(ids, tokens, offsets)

    def encode(self, text: str) -> list[int]:
        return self.encode_with_offsets(text).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        pieces = []
        for i in ids:
            if i in self.special_ids:
                if not skip_special_tokens:
                    pieces.append(self.id_to_token[i].encode("utf-8"))
                continue
            pieces.append(bytes(self.byte_decoder[c] for c in self.id_to_token[i]))
        return b"".join(pieces).decode("utf-8", errors="replace")


# --------------------------------------------------------------------------------------------
# Training: where the merges come from


def train_bpe(text: str, num_merges: int, pattern: str = GPT2_PATTERN) -> list[tuple[str, str]]:
    """Learn `num_merges` merges from text: each is the most frequent adjacent pair at that point
    (ties: the pair first seen). Words are counted once with their frequency, as real trainers do.

    Example: train_bpe("aaab aaab", 2) -> [('a', 'a'), ('aa', 'a')]  (bytes shown as characters)
    """
    assert num_merges >= 0, "num_merges must be >= 0"
    encoder = bytes_to_unicode()
    words = Counter("".join(encoder[b] for b in chunk.encode("utf-8")) for chunk in _split(pattern, text))
    corpus = [(list(word), count) for word, count in words.items()]  # (symbols, frequency)
    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols, count in corpus:
            for pair in zip(symbols, symbols[1:], strict=False):
                pairs[pair] += count
        if not pairs:
            break  # every word is a single token already
        best = max(pairs, key=pairs.__getitem__)  # Counter keeps first-seen order: ties go to the earliest
        merges.append(best)
        corpus = [(merge(symbols, best) if len(symbols) > 1 else symbols, count) for symbols, count in corpus]
    return merges


def tokenizer_from_merges(merges: Sequence[tuple[str, str]], pattern: str = GPT2_PATTERN) -> BPETokenizer:
    """A working BPETokenizer from trained merges: the 256 bytes, then one token per merge."""
    vocab = {c: i for i, c in enumerate(bytes_to_unicode().values())}
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    pre = {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False}
    return BPETokenizer({"model": {"type": "BPE", "vocab": vocab, "merges": [list(m) for m in merges]},
                         "pre_tokenizer": pre, "added_tokens": []})  # fmt: skip


def compression(tokenizer: BPETokenizer, text: str) -> float:
    """Bytes of UTF-8 text per token: 1.0 before any merge; higher is better."""
    return len(text.encode("utf-8")) / max(1, len(tokenizer.encode(text)))


def reference_corpus() -> tuple[str, str]:
    """The Python Language Reference that ships with Python (79 topics, 465 KB), split by topic into
    a training half and a held-out half, so compression is measured on text the merges never saw."""
    from pydoc_data.topics import topics

    names = sorted(topics)
    return "\n".join(topics[n] for n in names[::2]), "\n".join(topics[n] for n in names[1::2])


def compression_curve(
    merges: Sequence[tuple[str, str]], text: str, points: Sequence[int]
) -> list[dict[str, float]]:
    """Held-out bytes per token after the first k merges, for each k in points."""
    return [
        {"merges": k, "bytes_per_token": compression(tokenizer_from_merges(merges[:k]), text)} for k in points
    ]
