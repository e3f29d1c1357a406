"""A scripted model and a fixed router: the loop's logic, made exact, with no model at all."""

from __future__ import annotations

from shared.chat import ChatResponse, ToolCall, Usage
from stage2_prompting_tools.routing import Shortlist


class ScriptedModel:
    """Replies from a queue (simonw/llm's MockModel idea); records every request it is sent."""

    name = "scripted"

    def __init__(self, *replies: ChatResponse):
        self.replies = list(replies)
        self.requests: list[dict] = []

    def chat(self, messages, *, tools=None, tool_choice="auto", **kwargs) -> ChatResponse:
        self.requests.append(
            {"messages": [dict(m) for m in messages], "tools": tools, "tool_choice": tool_choice}
        )
        assert self.replies, "the loop asked for more replies than scripted"
        return self.replies.pop(0)


def call(name: str, arguments: str) -> ChatResponse:
    return ChatResponse("", [ToolCall(name=name, arguments=arguments)], "tool_calls", Usage(50, 10), 0.01)


def answer(text: str) -> ChatResponse:
    return ChatResponse(text, [], "stop", Usage(60, 8), 0.01)


class FixedRouter:
    """A router that always gives the same shortlist (no embedding model needed)."""

    def __init__(self, best: str, tools: list[str]):
        self.best, self.tools = best, tools

    def shortlist(self, request, tools, k=3) -> Shortlist:
        return Shortlist(best=self.best, tools=self.tools[:k], scores={})
