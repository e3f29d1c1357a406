"""LocalChatModel: the real default model, in process."""

from __future__ import annotations

import subprocess
import sys

import pytest

from shared.chat import cut_at_stop, parse_tool_calls
from shared.console import BadInput

pytestmark = pytest.mark.slow
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


def test_greedy_answer_names_paris_and_usage_matches_the_tokenizer(chat_model):
    response = chat_model.chat(FRANCE, max_tokens=32)
    assert "Paris" in response.text
    tokenizer = chat_model.tokenizer
    prompt_ids = tokenizer.apply_chat_template(
        FRANCE, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    assert response.usage.prompt_tokens == len(prompt_ids)
    # the completion is the answer's tokens plus the end-of-turn token that stopped it
    assert response.finish_reason == "stop"
    assert response.usage.completion_tokens == len(tokenizer.encode(response.text)) + 1
    assert response.latency_s > 0


def test_stream_joins_to_the_same_text(chat_model):
    response = chat_model.chat(FRANCE, max_tokens=32)
    deltas = list(chat_model.stream(FRANCE, max_tokens=32))
    assert len(deltas) > 1, "a stream yields several deltas, not one block"
    assert "".join(deltas) == response.text


def test_stop_string_cuts_before_it_in_chat_and_stream(chat_model):
    response = chat_model.chat(FRANCE, max_tokens=32, stop=[" Paris"])
    assert response.text == "The capital of France is"
    assert "".join(chat_model.stream(FRANCE, max_tokens=32, stop=[" Paris"])) == response.text


def test_max_tokens_ends_with_length(chat_model):
    response = chat_model.chat(FRANCE, max_tokens=3)
    assert response.finish_reason == "length" and response.usage.completion_tokens == 3


def test_seeded_sampling_is_reproducible(chat_model):
    story = [{"role": "user", "content": "Tell me a short story about a cat."}]
    a = chat_model.chat(story, max_tokens=20, temperature=1.0, seed=11).text
    b = chat_model.chat(story, max_tokens=20, temperature=1.0, seed=11).text
    assert a == b


@pytest.mark.parametrize("options", [{"max_tokens": 0}, {"temperature": -1.0}, {"top_p": 0.0}])
def test_bad_options_are_bad_input(chat_model, options):
    with pytest.raises(BadInput):
        chat_model.chat(FRANCE, **options)


def test_empty_messages_are_bad_input(chat_model):
    with pytest.raises(BadInput, match="empty"):
        chat_model.chat([])


def test_chat_command_answers_and_rejects_bad_input():
    ok = subprocess.run(
        [sys.executable, "-m", "shared.chat", "What is the capital of France?"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ok.returncode == 0, ok.stderr
    assert "Paris" in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "shared.chat", "--max-tokens", "0", "hi"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_cut_at_stop_and_tool_call_parsing_pure():
    assert cut_at_stop("a b STOP c", ["STOP"]) == ("a b ", True)
    assert cut_at_stop("abc", None) == ("abc", False)
    text, calls = parse_tool_calls('ok <tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call>')
    assert text == "ok" and calls[0].name == "f" and calls[0].arguments == '{"x": 1}'
    _, [bad] = parse_tool_calls("<tool_call>{not json</tool_call>")
    assert bad.name == "" and bad.arguments == "{not json"
