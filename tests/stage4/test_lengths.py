"""lengths.py: the shipped pairs are measured, and the fitted max length cuts none of them."""

from __future__ import annotations

import pytest

from stage4_finetune_align.data import load_pairs, load_sft
from stage4_finetune_align.lengths import fit_max_length, pair_lengths, sft_lengths, truncated_share


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from shared.models import resolve

    return AutoTokenizer.from_pretrained(resolve("smollm2-135m-instruct", kind="chat"))


def test_fit_rounds_the_longest_up():
    assert fit_max_length([40, 239, 120]) == 240 and fit_max_length([16]) == 16
    assert truncated_share([10, 20, 30, 40], 25) == 0.5 and truncated_share([], 8) == 0.0
    with pytest.raises(ValueError):
        fit_max_length([])


def test_whole_pairs_fit_and_the_old_length_cut_most_rambling_answers(tokenizer):
    pairs = load_pairs()
    lengths = pair_lengths(tokenizer, pairs) + sft_lengths(tokenizer, load_sft())
    fitted = fit_max_length(lengths)
    assert fitted == 240 and truncated_share(lengths, fitted) == 0.0
    rambling = pair_lengths(tokenizer, [p for p in pairs if p["fault"] == "rambling"])[1::2]
    assert truncated_share(rambling, 128) == 1.0, "at 128 tokens every rambling answer lost its end"
