"""bpe.py: the hand-written byte-level BPE gives the Transformers tokenizer's ids, and training works."""

from __future__ import annotations

import json
from pydoc_data.topics import topics

import pytest

from shared.models import resolve
from stage1_foundations.bpe import (
    BPETokenizer,
    apply_merges,
    bytes_to_unicode,
    compression,
    compression_curve,
    merge,
    pre_tokenize,
    reference_corpus,
    tokenizer_from_merges,
    train_bpe,
)

EDGE_CASES = [
    "a  b   c\t\td\n\n\ne \n x",  # runs of spaces, tabs and newlines
    "   leading", "trailing   ", "\r\n\r\n", " ", "",
    "12345 6789 3.14159 2026-12-01",  # digits
    "naïve café Ünïcödé Ωμέγα", "\u00a0non-breaking\u2003em space",  # accents, other spaces
    "emoji 😀👍🏽 ☕ 🇫🇷 family 👨‍👩‍👧",  # multi-codepoint emoji, skin tone, flags, joiners
    "<|im_start|>user\nhi<|im_end|>\n", "x<|im_end|>y <|endoftext|>z<|im_start|>",  # special tokens in text
    "it's don't we'll I'M they've",  # contractions
    "def f(x):\n\treturn {'a': [1, 2]}  # comment\n",
]  # fmt: skip


@pytest.fixture(scope="module")
def bpe():
    return BPETokenizer.from_model("smollm2-135m-instruct")


def test_byte_map_is_a_bijection_onto_printable_characters():
    table = bytes_to_unicode()
    assert len(table) == 256 and len(set(table.values())) == 256
    assert table[ord("A")] == "A" and table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ"
    assert all(c.isprintable() for c in table.values())


@pytest.mark.exercise("stage1.bpe_merge")
def test_merge_and_merge_loop_worked_examples(bpe):
    assert merge(["a", "a", "a", "b"], ("a", "a")) == ["aa", "a", "b"]
    assert apply_merges(list("Ġcapital"), bpe.ranks) == ["Ġcapital"]
    assert apply_merges(list("ĠLovelace"), bpe.ranks) == ["ĠLo", "vel", "ace"]
    assert apply_merges(["x"], bpe.ranks) == ["x"]


def test_pre_tokenizer_splits_like_gpt2():
    spec = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
    assert pre_tokenize(spec, "Hello  world42!") == ["Hello", " ", " world", "42", "!"]


@pytest.mark.exercise("stage1.bpe_merge")
def test_ids_equal_transformers_on_the_whole_python_reference(bpe, tokenizer):
    total = 0
    for name, text in sorted(topics.items()):
        ids = bpe.encode(text)
        assert ids == tokenizer(text, add_special_tokens=False)["input_ids"], name
        assert bpe.decode(ids) == text, name
        total += len(ids)
    assert len(topics) == 79 and total > 100_000


def test_empty_text_is_no_tokens(bpe):
    assert bpe.encode("") == [] and bpe.encode_with_offsets("").offsets == [] and bpe.decode([]) == ""


@pytest.mark.parametrize("text", [text for text in EDGE_CASES if text])  # "" needs no merges: tested above
@pytest.mark.exercise("stage1.bpe_merge")
def test_edge_cases_ids_offsets_and_round_trip(bpe, tokenizer, text):
    ours = bpe.encode_with_offsets(text)
    theirs = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    assert ours.ids == theirs["input_ids"]
    assert ours.offsets == [tuple(o) for o in theirs["offset_mapping"]]
    assert bpe.decode(ours.ids) == text == tokenizer.decode(theirs["input_ids"])
    assert bpe.decode(ours.ids, skip_special_tokens=True) == tokenizer.decode(
        theirs["input_ids"], skip_special_tokens=True
    )


@pytest.mark.parametrize(
    "pre_tokenizer",
    [
        # SmolLM2's hub tokenizer: digits one by one, then GPT-2's byte-level split
        {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Digits", "individual_digits": True},
                {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True, "trim_offsets": True},
            ],
        },
        # Llama 3 style: its own split regex, then bytes without a second split
        {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "behavior": "Isolated",
                    "invert": False,
                    "pattern": {
                        "Regex": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
                    },
                },
                {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False, "trim_offsets": True},
            ],
        },
        {"type": "ByteLevel", "add_prefix_space": True, "use_regex": True, "trim_offsets": True},
    ],
    ids=["digits+bytelevel", "llama3-split", "prefix-space"],
)
@pytest.mark.exercise("stage1.bpe_merge")
def test_other_pre_tokenizers_equal_the_tokenizers_library(pre_tokenizer):
    """The same vocabulary and merges under other declared pre-tokenizers, against `tokenizers` itself."""
    from tokenizers import Tokenizer

    spec = json.loads((resolve("smollm2-135m-instruct") / "tokenizer.json").read_text())
    spec["pre_tokenizer"] = pre_tokenizer
    ours, theirs = BPETokenizer(spec), Tokenizer.from_str(json.dumps(spec))
    for text in [*EDGE_CASES, topics["for"], topics["numbers"]]:
        assert ours.encode(text) == theirs.encode(text, add_special_tokens=False).ids, text[:40]


def test_training_learns_the_most_frequent_pair_first():
    assert train_bpe("aaab aaab", 2) == [("a", "a"), ("aa", "a")]
    assert train_bpe("ab", 5) == [("a", "b")], "stops when every word is one token"


@pytest.mark.exercise("stage1.bpe_merge")
def test_trained_merges_compress_held_out_text():
    train_text, test_text = reference_corpus()
    merges = train_bpe(train_text[:60_000], 60)
    trained = tokenizer_from_merges(merges)
    sample = test_text[:40_000]
    assert trained.decode(trained.encode(sample)) == sample
    curve = compression_curve(merges, sample, [0, 30, 60])
    rates = [p["bytes_per_token"] for p in curve]
    assert rates[0] == 1.0 and rates[0] < rates[1] < rates[2], rates
    assert compression(BPETokenizer.from_model("smollm2-135m-instruct"), sample) > 3 * rates[2] / 2
