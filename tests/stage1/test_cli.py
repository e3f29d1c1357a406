"""The stage 1 commands: documented JSON keys, and bad input exits 2 with one line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from shared.console import run_cli
from stage1_foundations.bench import run_benchmark, write_report
from stage1_foundations.cli import main

GENERATE_KEYS = {"model", "prompt", "text", "token_ids", "new_tokens", "seconds", "time_to_first_token_s",
                 "tokens_per_second"}  # fmt: skip


def run_json(capsys, *argv: str) -> dict:
    assert run_cli(main, [*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_tokenize_json(capsys):
    out = run_json(capsys, "tokenize", "Hello world")
    assert out["tokens"] == ["Hello", "Ġworld"] and out["ids"] == [19556, 905]
    chat = run_json(capsys, "tokenize", "--chat", "hi")
    assert chat["tokens"][0] == "<|im_start|>" and len(chat["ids"]) == len(chat["tokens"])


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
    ],
)
def test_bad_input_exits_2_with_one_line(argv, message):
    run = subprocess.run([sys.executable, "-m", "stage1_foundations", *argv], capture_output=True, text=True)
    assert run.returncode == 2, run.stderr
    assert message in run.stderr and "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_prompt_longer_than_the_context_exits_2(capsys):
    assert run_cli(main, ["generate", "--max-new-tokens", "9000", "hi"]) == 2
    assert "exceeds the model's context of 8192 tokens" in capsys.readouterr().err


@pytest.mark.exercise("stage1.decode_loop", "stage1.cached_step", "stage1.stream_holdback")
def test_bench_report_has_every_field_and_writes_json_and_png(tiny, tmp_path):
    model, tokenizer = tiny
    report = run_benchmark(model, tokenizer, [4, 8], repeats=1)
    assert {r["method"] for r in report["results"]} == {"generate", "loop+cache", "loop-nocache"}
    assert all(r["tokens_per_second"] > 0 for r in report["results"])
    assert set(report["cached_vs_generate"]) == {4, 8} and set(report["targets"]) == {
        "cached_at_least_0.9x_generate", "uncached_slowdown_grows_with_length"}  # fmt: skip
    json_path, png_path = write_report(report)
    assert json.loads(json_path.read_text())["prompt_tokens"] == report["prompt_tokens"]
    assert png_path.read_bytes()[:4] == b"\x89PNG"
