"""quantize.py: sliding-window perplexity against a hand count, bad input, the report files, and (slow)
real footprints and perplexities of the default model in fp32, int8 and NF4."""

from __future__ import annotations

import json
import math

import pytest

from shared.console import BadInput
from stage5_serving_ops import quantize


def hand_nll(model, ids, max_length, stride):
    """Score each token one at a time: -log p(token i | the tokens of its window before i)."""
    import torch

    starts = list(range(0, len(ids), stride))
    total, count = 0.0, 0
    for i in range(1, len(ids)):
        # the first window that reaches token i scores it; its context starts at that window's start
        begin = next(b for b in starts if b + max_length > i)
        if begin == i:
            continue  # a window's first token has no context to be predicted from (stride == max_length)
        with torch.no_grad():
            logits = model(torch.tensor([ids[begin:i]])).logits[0, -1].float()
        total -= float(torch.log_softmax(logits, dim=-1)[ids[i]])
        count += 1
    return total, count


TEXT = "The pager rang twice before the secondary picked up and read the runbook aloud."


@pytest.mark.parametrize("max_length,stride", [(512, 256), (8, 4), (6, 6), (7, 3)])
def test_window_nll_matches_a_hand_count(tiny_llama, max_length, stride):
    import torch

    model, tokenizer = tiny_llama
    ids = tokenizer(TEXT).input_ids
    assert len(ids) > 12, "the text spans several windows"
    total, count = quantize.window_nll(model, torch.tensor([ids]), max_length=max_length, stride=stride)
    expected_total, expected_count = hand_nll(model, ids, max_length, stride)
    assert count == expected_count
    if stride < max_length:
        assert count == len(ids) - 1, "with overlapping windows every token after the first is scored once"
    assert total == pytest.approx(expected_total, rel=1e-4)
    ppl = quantize.perplexity(model, tokenizer, TEXT, max_length=max_length, stride=stride)
    assert ppl == pytest.approx(math.exp(expected_total / expected_count), rel=1e-4)


def test_one_window_equals_the_models_own_loss(tiny_llama):
    import torch

    model, tokenizer = tiny_llama
    ids = tokenizer(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        loss = float(model(ids, labels=ids).loss)
    assert quantize.perplexity(model, tokenizer, TEXT) == pytest.approx(math.exp(loss), rel=1e-4)


def test_bad_windows_and_short_text(tiny_llama):
    model, tokenizer = tiny_llama
    with pytest.raises(BadInput):
        quantize.perplexity(model, tokenizer, TEXT, max_length=4, stride=8)
    with pytest.raises(BadInput):
        quantize.perplexity(model, tokenizer, "a")


def test_tokens_per_second_on_the_tiny_model(tiny_llama):
    model, tokenizer = tiny_llama
    rate = quantize.tokens_per_second(model, tokenizer, new_tokens=5)
    assert math.isfinite(rate) and rate > 0
    with pytest.raises(BadInput):
        quantize.tokens_per_second(model, tokenizer, new_tokens=0)


def test_unknown_precision_is_bad_input():
    with pytest.raises(BadInput, match="fp32, bf16, int8, nf4, fp4"):
        quantize.load("int3")
    with pytest.raises(BadInput):
        quantize.run(["fp32", "int2"])  # rejected before anything loads


def test_heldout_text_is_shipped():
    text = quantize.heldout_text()
    assert 2500 <= len(text) <= 4000


FAKE = {"model": "tiny", "device": "cpu", "heldout": "heldout.txt",
        "rows": [{"precision": p, "footprint_mb": f, "perplexity": q, "tokens_per_second": s, "load_seconds": 0.1,
                  "device": "cpu", "answer": "Paris."}
                 for p, f, q, s in (("fp32", 538.0, 9.1, 30.0), ("int8", 220.0, 9.3, 5.0), ("nf4", 166.0, 10.2, 8.0))]}  # fmt: skip


def test_write_report_writes_json_and_png(tmp_path):
    json_path, png_path = quantize.write_report(FAKE, tmp_path / "reports")
    assert json.loads(json_path.read_text()) == FAKE
    assert png_path.name == "stage5_quantization.png" and png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((tmp_path / "reports").glob(".*")), "no temporary files left behind"
    assert quantize.table_rows(FAKE)[2] == ("nf4", "166", "10.20", "8.0", "Paris.")


# --------------------------------------------------------------------------------------------
# The real model: each precision loaded once.


@pytest.fixture(scope="module")
def real_rows():
    """Footprint of fp32, int8 and NF4; perplexity of fp32 and NF4 (non-overlapping windows, to keep
    it quick: a 4-bit forward pass on a CPU dequantizes every weight); fp32's answer."""
    rows = {}
    text = quantize.heldout_text()
    for precision in ("fp32", "int8", "nf4"):
        model, tokenizer = quantize.load(precision)
        rows[precision] = {"footprint_mb": model.get_memory_footprint() / 2**20}
        if precision != "int8":
            rows[precision]["perplexity"] = quantize.perplexity(
                model, tokenizer, text, max_length=512, stride=512
            )
        if precision == "fp32":
            rows[precision]["answer"] = quantize.answer(model, tokenizer)
        del model
    return rows


@pytest.mark.slow
def test_footprints_shrink_fp32_int8_nf4(real_rows):
    fp32, int8, nf4 = (real_rows[p]["footprint_mb"] for p in ("fp32", "int8", "nf4"))
    assert fp32 > int8 > nf4
    assert fp32 > 2 * nf4, "the linear layers shrink 8x; the fp32 embedding keeps the whole above 1/4"


@pytest.mark.slow
def test_perplexity_of_the_real_model_is_sane_and_nf4_close(real_rows):
    fp32, nf4 = real_rows["fp32"]["perplexity"], real_rows["nf4"]["perplexity"]
    assert math.isfinite(fp32) and 1 < fp32 < 100
    assert fp32 * 0.8 < nf4 < fp32 * 2, "4-bit costs some quality, not most of it"


@pytest.mark.slow
def test_the_answer_helper_gets_the_sanity_question_right(real_rows):
    assert "Paris" in real_rows["fp32"]["answer"]


def test_rounded_weights_are_what_load_in_4bit_computes_with(tiny_llama, tmp_path):
    """round_weights gives, for every quantized layer, exactly the weights a `load_in_4bit` model
    multiplies by (its 4-bit weights dequantized); the embedding and the norms are left alone."""
    import copy

    import torch
    from bitsandbytes import functional as bnb
    from transformers import AutoModelForCausalLM

    model, _ = tiny_llama
    model.save_pretrained(tmp_path / "tiny")
    four_bit = AutoModelForCausalLM.from_pretrained(tmp_path / "tiny", dtype=torch.float32, device_map={"": "cpu"},
                                                    quantization_config=quantize.quantization_config("nf4", "cpu"))  # fmt: skip
    rounded = copy.deepcopy(model)
    count = quantize.round_weights(rounded, "nf4")
    layers = [
        n for n, m in rounded.named_modules() if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head")
    ]
    assert count == sum(rounded.get_submodule(n).weight.numel() for n in layers) > 0
    for name in layers:
        packed = four_bit.get_submodule(name).weight
        expected = bnb.dequantize_4bit(packed.data, packed.quant_state).float()
        assert torch.equal(rounded.get_submodule(name).weight, expected), name
        assert not torch.equal(rounded.get_submodule(name).weight, model.get_submodule(name).weight)
    assert torch.equal(rounded.model.embed_tokens.weight, model.model.embed_tokens.weight)
