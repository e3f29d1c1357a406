"""The stage 1 commands: documented JSON keys, and bad input exits 2 with one line."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import torch

from shared.console import run_cli
from stage1_foundations import figures
from stage1_foundations.bench import run_benchmark, write_report
from stage1_foundations.cli import main

GENERATE_KEYS = {"model", "engine", "prompt", "text", "token_ids", "new_tokens", "seconds", "time_to_first_token_s",
                 "tokens_per_second"}  # fmt: skip


def run_json(capsys, *argv: str) -> dict:
    assert run_cli(main, [*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_tokenize_json(capsys):
    out = run_json(capsys, "tokenize", "Hello world")
    assert out["tokens"] == ["Hello", "Ġworld"] and out["ids"] == [19556, 905]
    chat = run_json(capsys, "tokenize", "--chat", "hi")
    assert chat["tokens"][0] == "<|im_start|>" and len(chat["ids"]) == len(chat["tokens"])


@pytest.mark.exercise("stage1.bpe_merge")
def test_tokenize_with_the_hand_written_bpe_prints_the_same_json(capsys):
    for argv in (["tokenize", "Ada Lovelace ☕ 1843"], ["tokenize", "--chat", "What is 2+2?"]):
        assert run_json(capsys, *argv, "--engine", "scratch") == run_json(capsys, *argv)


@pytest.mark.slow
@pytest.mark.exercise("stage1.rmsnorm", "stage1.rope", "stage1.gqa_attention", "stage1.static_cache",
                      "stage1.decode_loop", "stage1.cached_step")  # fmt: skip
def test_scratch_engine_next_token_perplexity_and_generate(capsys):
    hf = run_json(capsys, "next-token", "The capital of France is", "--top", "3")
    ours = run_json(capsys, "next-token", "The capital of France is", "--top", "3", "--engine", "scratch")
    assert [t["id"] for t in ours["next_tokens"]] == [t["id"] for t in hf["next_tokens"]]
    text = "The cat sat on the mat and looked out of the window."
    ppl = [run_json(capsys, "perplexity", text, "--engine", e)["perplexity"] for e in ("hf", "scratch")]
    assert abs(ppl[0] - ppl[1]) < 1e-3 * ppl[0]
    for extra in ([], ["--no-cache"]):
        gen = run_json(capsys, "generate", "--chat", "--engine", "scratch", "--max-new-tokens", "12", *extra,
                       "What is the capital of France?")  # fmt: skip
        assert gen.keys() >= GENERATE_KEYS and gen["engine"] == "scratch" and "Paris" in gen["text"]


@pytest.mark.slow
@pytest.mark.exercise("stage1.rope", "stage1.gqa_attention", "stage1.static_cache")
def test_several_prompts_decode_as_one_batch_in_input_order(capsys):
    prompts = ["What is the capital of France?", "hi", "Name three primary colors."]
    for engine in ("hf", "scratch"):
        batch = run_json(capsys, "generate", "--chat", "--engine", engine, "--max-new-tokens", "10", *prompts)
        assert isinstance(batch, list) and [r["prompt"] for r in batch] == prompts
        alone = run_json(
            capsys, "generate", "--chat", "--engine", engine, "--max-new-tokens", "10", prompts[1]
        )
        assert batch[1]["token_ids"] == alone["token_ids"] and "Paris" in batch[0]["text"]


@pytest.mark.slow
@pytest.mark.exercise("stage1.decode_loop", "stage1.cached_step", "stage1.stream_holdback", "stage1.top_p")
def test_next_token_and_generate_json(capsys):
    out = run_json(capsys, "next-token", "The capital of France is", "--top", "3")
    assert len(out["next_tokens"]) == 3 and out["next_tokens"][0]["text"] == " Paris"
    gen = run_json(capsys, "generate", "--chat", "--max-new-tokens", "12", "What is the capital of France?")
    assert gen.keys() >= GENERATE_KEYS
    assert gen["new_tokens"] == len(gen["token_ids"]) and "Paris" in gen["text"]
    sampled = run_json(capsys, "generate", "--temperature", "0.9", "--top-p", "0.9", "--top-k", "40",
                       "--seed", "3", "--no-cache", "--max-new-tokens", "5", "Once upon a time")  # fmt: skip
    assert sampled["new_tokens"] == 5


@pytest.mark.slow
@pytest.mark.exercise("stage1.decode_loop", "stage1.cached_step", "stage1.stream_holdback")
def test_stream_prints_the_same_text(capsys):
    assert run_cli(main, ["generate", "--chat", "--stream", "--max-new-tokens", "12", "What is 2+2?"]) == 0
    streamed = capsys.readouterr().out.rstrip("\n")
    plain = run_json(capsys, "generate", "--chat", "--max-new-tokens", "12", "What is 2+2?")
    assert streamed == plain["text"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["generate", ""], "prompt is empty"),
        (["generate", "--temperature", "-1", "hi"], "temperature must be >= 0"),
        (["generate", "--top-p", "1.5", "hi"], "top_p must be in (0, 1]"),
        (["generate", "--top-p", "0", "hi"], "top_p must be in (0, 1]"),
        (["bench", "--lengths", "a,b"], "--lengths"),
        (["tokenize", ""], "text is empty"),
        (["generate", "--engine", "torch", "hi"], "--engine must be one of hf, scratch, got 'torch'"),
        (["tokenize", "--engine", "sentencepiece", "hi"], "--engine must be one of hf, scratch"),
        (["generate"], "give at least one prompt"),
        (["generate", "--stream", "a", "b"], "--stream shows one prompt's text"),
        (["train-bpe", "--merges", "0"], "--merges must be between 1 and 5000"),
    ],
)
def test_bad_input_exits_2_with_one_line(argv, message):
    run = subprocess.run([sys.executable, "-m", "stage1_foundations", *argv], capture_output=True, text=True)
    assert run.returncode == 2, run.stderr
    assert message in run.stderr and "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["hf", "scratch"])
def test_prompt_longer_than_the_context_exits_2(capsys, engine):
    assert run_cli(main, ["generate", "--engine", engine, "--max-new-tokens", "9000", "hi"]) == 2
    assert "exceeds the model's context of 8192 tokens" in capsys.readouterr().err
    long_text = "word " * 9000
    assert run_cli(main, ["perplexity", "--engine", engine, long_text]) == 2
    assert "exceeds the model's context" in capsys.readouterr().err


@pytest.mark.exercise("stage1.decode_loop", "stage1.cached_step", "stage1.stream_holdback")
def test_bench_report_has_every_field_and_writes_json_and_png(tiny, tiny_scratch, tmp_path):
    model, tokenizer = tiny
    report = run_benchmark(model, tiny_scratch[0], tokenizer, [4, 8], repeats=1, batch_sizes=(1, 2), batch_tokens=3,
                           bf16_model=lambda: (copy.deepcopy(model).to(torch.bfloat16),
                                               copy.deepcopy(tiny_scratch[0]).to(torch.bfloat16)))  # fmt: skip
    # copies: a round trip through bfloat16 would leave the shared models' weights (and RoPE
    # frequencies) rounded, and every later parity test off by 1e-3
    assert {r["method"] for r in report["results"]} == {
        "generate",
        "loop+cache",
        "loop-nocache",
        "scratch+static",
    }
    assert all(r["tokens_per_second"] > 0 for r in report["results"] + report["batch"] + report["bf16"])
    assert {(r["engine"], r["batch"]) for r in report["batch"]} == {
        ("hf", 1),
        ("hf", 2),
        ("scratch", 1),
        ("scratch", 2),
    }
    assert {r["method"] for r in report["bf16"]} == {"generate", "scratch+static"}
    assert set(report["scratch_vs_generate"]) == {4, 8} and report["batch_gain"]["from"] == 1
    assert len(report["targets"]) == 4 and report["memory"]["read_bandwidth_gb_s"] > 0
    json_path, png_path = write_report(report)
    assert json.loads(json_path.read_text())["prompt_tokens"] == report["prompt_tokens"]
    assert png_path.read_bytes()[:4] == b"\x89PNG"
    table = figures.decode(json.loads(json_path.read_text()))  # the README section renders from the JSON
    assert "| 8 |" in table and "hand / generate" in table and "batch 2 / batch 1" in table


@pytest.mark.exercise("stage1.bpe_merge")
def test_train_bpe_writes_a_report_the_readme_renders(capsys):
    report = run_json(capsys, "train-bpe", "--merges", "20")
    assert report["merges"] == 20 and report["curve"][0] == {"merges": 0, "bytes_per_token": 1.0}
    assert report["curve"][-1]["bytes_per_token"] > 1.0 and report["model_tokenizer_merges"] == 48_900
    assert "| 20 |" in figures.bpe(report)


def test_uncached_loop_runs_once_above_128_tokens():
    from stage1_foundations.bench import runs_for

    assert runs_for("loop-nocache", 129, 2) == 1 and runs_for("loop-nocache", 128, 2) == 2
    assert runs_for("generate", 512, 2) == 2 and runs_for("scratch+static", 512, 3) == 3


@pytest.mark.exercise(
    "stage1.rmsnorm",
    "stage1.rope",
    "stage1.gqa_attention",
    "stage1.static_cache",
    "stage1.decode_loop",
    "stage1.cached_step",
)
def test_parity_measures_the_tiny_model_and_the_readme_renders_it(tiny_dir, tiny_scratch):
    from stage1_foundations.parity import measure

    model, tokenizer = tiny_scratch
    report = measure(
        tiny_dir, model, tokenizer, new_tokens=4, chat_prompts=["hi", "What is 2+2?", "Name a color."]
    )
    for row in report["logits"]:
        assert row["max_abs_diff_vs_eager"] < 1e-5 and row["max_abs_diff_vs_sdpa"] < 1e-5, row
    assert report["greedy"]["same_cached"] == report["greedy"]["prompts"] == 3, report["greedy"]
    for batch in report["batch"]:
        assert batch["different"] == 0 and batch["rows"] == 3, batch
    assert "| 700 tokens of the Python reference | 700 |" in figures.parity(report)
