"""Chat templates that show a model its tools.

A chat template turns a list of messages into the one string the model reads. Tool calling needs
three things from it: the list of tools (in the system turn), the assistant's earlier calls, and
the tools' results. SmolLM2-135M-Instruct's own template renders none of them: it writes every
message's `content` and drops `tools` and `tool_calls`, so a model (or a server) using it cannot
see what it may call or what a call returned.

`templates/chatml_tools.jinja` is the same ChatML format with tools added: the tools listed in the
system turn, each call as a hermes-style block (the format vLLM's `hermes` parser reads back)

    <tool_call>
    {"name": "calculator", "arguments": {"expression": "23*47"}}
    </tool_call>

and each result in a `tool` turn, inside `<tool_response>` fences: data, never a user turn.
Without tools the template renders exactly what SmolLM2's own does (a test checks it).

One file serves both paths: stage 2's in-process model renders with it, and stage 5's vLLM server
is started with `--chat-template` pointing at it, so both see the same prompt.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

TOOL_TEMPLATE = Path(__file__).parent / "templates" / "chatml_tools.jinja"
_PROBE = {"type": "function", "function": {"name": "probe_tool_7f3a", "description": "probe",
                                           "parameters": {"type": "object", "properties": {}}}}  # fmt: skip


def renders_tools(tokenizer: Any) -> bool:
    """Whether the tokenizer's own chat template shows the model a tool it is given."""
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "hi"}], tools=[_PROBE], tokenize=False
        )
    except Exception:  # a template that breaks on `tools` does not render them either
        return False
    return "probe_tool_7f3a" in text


@lru_cache(maxsize=1)
def tool_template_text() -> str:
    return TOOL_TEMPLATE.read_text(encoding="utf-8")


def tool_chat_template(tokenizer: Any) -> str | None:
    """The template to render tool conversations with: None (the model's own) when it renders tools."""
    return None if renders_tools(tokenizer) else tool_template_text()


def vllm_tool_calling_args(model_dir: str | Path) -> list[str]:
    """The vLLM flags that turn on tool calling for a model: the `hermes` parser, which reads the
    <tool_call> blocks back into `tool_calls`, and our template when the model's own ignores tools."""
    from transformers import AutoTokenizer

    args = ["--enable-auto-tool-choice", "--tool-call-parser", "hermes"]
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    except (OSError, ValueError):  # not a model folder: vLLM will say so itself
        return args
    if not renders_tools(tokenizer):
        args += ["--chat-template", str(TOOL_TEMPLATE)]
    return args
