"""shared/chat_templates.py: the tools template renders tools, calls and results, and nothing else changes."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from shared.chat_templates import TOOL_TEMPLATE, renders_tools, tool_template_text, vllm_tool_calling_args
from shared.models import resolve

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Current weather for a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}  # fmt: skip


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(resolve("smollm2-135m-instruct"))


@pytest.mark.parametrize("messages", [[{"role": "user", "content": "hi"}],
                                      [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                                       {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "bye"}]])  # fmt: skip
def test_without_tools_it_renders_exactly_what_smollm2s_own_template_does(tokenizer, messages):
    ours = tokenizer.apply_chat_template(messages, chat_template=tool_template_text(), tokenize=False,
                                         add_generation_prompt=True)  # fmt: skip
    assert ours == tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def test_it_shows_the_tools_the_calls_and_the_results_as_tool_turns(tokenizer):
    assert not renders_tools(tokenizer), "SmolLM2's own template drops `tools`: the reason this file exists"
    messages = [{"role": "user", "content": "Weather in Lisbon?"},
                {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "type": "function", "function":
                 {"name": "get_weather", "arguments": json.dumps({"city": "Lisbon"})}}]},
                {"role": "tool", "tool_call_id": "c1", "content": '{"result": "sunny"}'}]  # fmt: skip
    text = tokenizer.apply_chat_template(messages, tools=[WEATHER], chat_template=tool_template_text(), tokenize=False,
                                         add_generation_prompt=True)  # fmt: skip
    assert "get_weather(city: string): Current weather for a city." in text
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Lisbon"}}\n</tool_call>' in text
    assert '<|im_start|>tool\n<tool_response>\n{"result": "sunny"}\n</tool_response><|im_end|>' in text
    assert text.count("<|im_start|>user") == 1, "a tool result is never a user turn"


def test_vllm_gets_the_hermes_parser_and_this_template_for_smollm2(tmp_path):
    args = vllm_tool_calling_args(resolve("smollm2-135m-instruct"))
    assert args[:3] == ["--enable-auto-tool-choice", "--tool-call-parser", "hermes"]
    assert args[args.index("--chat-template") + 1] == str(TOOL_TEMPLATE)
    assert "--chat-template" not in vllm_tool_calling_args(tmp_path), "not a model folder: vLLM will say so"
