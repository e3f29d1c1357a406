"""The tool loop: decide, execute, feed back, decide again; bounded, with the guarantees in code.

    shortlist = router.shortlist(request)            # the tools this request could need, made once
    for step in range(max_steps):
        choice = decide(conversation, shortlist)     # a call to a shortlisted tool, or "answer"
        if choice is "answer":
            return answer(conversation)              # words, from the conversation and its tool turns
        step = run(choice)                           # guarded: on the shortlist? confirmed? valid?
        conversation += [assistant(call), tool(result or error)]   # the result is data for the next decision

**Who decides**, in each mode (README section 6 measures them and picks the default):

- `router`: the embedding router decides the one call (or "answer" when a greeting is likelier
  than any tool); the model only writes the arguments, under the grammar; after the result the
  model answers. One step by construction: the router reads the request, never a result.
- `model`: the model decides before every step, under the grammar, among the request's shortlist
  (the router's top k tools) plus "answer": a first call, then after each result another call or
  the answer. Up to `max_steps` calls, so two-step requests are possible and a failed call can be
  retried.
- `hybrid`: the router decides the first call; after each result the model decides, as in `model`.
- `native`: the model (a server's own tool calling, or in process a grammar that also allows words)
  decides freely between words and a call to a shortlisted tool, `tool_choice="auto"`.

**What the loop guarantees**, whatever the model does (a served model may not honour a grammar;
an instruction injected into a tool result may ask for anything):

1. Every failure is a message, not a crash. Malformed JSON, an unknown tool, arguments that fail
   the schema, a tool that raises: each becomes the `tool` message's error, the model sees it at
   the next decision (and may retry, in the modes where it decides), and the loop goes on.
2. Only the request's shortlist runs. The shortlist is made once, from what the user wrote; a call
   to any other tool is refused, so a tool result cannot add a tool to the turn.
3. Side effects need the user. A tool declared `side_effects=True` runs only if `confirm(tool,
   arguments)` says yes (the CLI asks, or takes `--yes`); no means nothing runs and the turn ends.
4. Tool output is data. It travels only in `tool` messages, as JSON with `<` and `>` escaped
   (`\\u003c`), so a result cannot close its own fence or forge a `<|im_start|>` turn; no tool
   result is ever copied into a user or system message.
5. The loop is bounded by `max_steps`.

    python -m stage2_prompting_tools ask "What is 23 * 47?"
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from shared.chat import ChatResponse, ToolCall, Usage
from stage2_prompting_tools.grammar import decision_tools, grounded_tools, request_text
from stage2_prompting_tools.routing import DIRECT_ANSWER, Router, Shortlist
from stage2_prompting_tools.tool_prompts import answer_messages, decision_messages
from stage2_prompting_tools.tools import Tool, ToolError

MODES = ("router", "model", "hybrid", "native")
DEFAULT_MODE = "router"
Confirm = Callable[[Tool, dict[str, Any]], bool]


def never_confirm(tool: Tool, arguments: dict[str, Any]) -> bool:
    return False


@dataclass
class Step:
    tool: str
    arguments: Any  # the parsed arguments, or the raw text when it was not valid JSON
    result: Any = None
    error: str | None = None
    refused: str | None = None  # which guarantee stopped it: "shortlist" | "confirmation"


@dataclass
class AgentResult:
    answer: str
    steps: list[Step] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    finished: bool = True  # False when max_steps ran out, or the user did not confirm a side effect
    declined: str | None = None  # the side-effecting tool the user did not confirm
    shortlist: list[str] = field(default_factory=list)
    attempted: list[str] = field(default_factory=list)  # every tool name the model called, refused or not
    messages: list[dict[str, Any]] = field(default_factory=list)  # this turn, as chat history

    def to_dict(self) -> dict[str, Any]:
        return {"answer": self.answer, "steps": [asdict(s) for s in self.steps],
                "usage": {"prompt_tokens": self.usage.prompt_tokens,
                          "completion_tokens": self.usage.completion_tokens},
                "finished": self.finished, "declined": self.declined, "shortlist": self.shortlist}  # fmt: skip


def execute(call: ToolCall, tools: dict[str, Tool]) -> Step:
    """Run one call; whatever goes wrong is recorded in the step, never raised."""
    # EXERCISE stage2.execute_call: json.loads the arguments ('' is {}), look up the tool, check they are an object, call it; any failure (bad JSON, unknown tool, ToolError, other exception) becomes Step.error
    try:
        arguments = json.loads(call.arguments) if call.arguments.strip() else {}
    except json.JSONDecodeError as e:
        return Step(call.name, call.arguments, error=f"arguments are not valid JSON ({e.msg})")
    if call.name not in tools:
        return Step(call.name, arguments, error=f"unknown tool {call.name!r}; available: {', '.join(tools)}")
    if not isinstance(arguments, dict):
        return Step(call.name, arguments, error="arguments must be a JSON object")
    try:
        return Step(call.name, arguments, result=tools[call.name](**arguments))
    except ToolError as e:
        return Step(call.name, arguments, error=str(e))
    except Exception as e:  # a bug in a tool must not take the loop down
        return Step(call.name, arguments, error=f"{type(e).__name__}: {e}")
    # END EXERCISE


def as_data(body: Any) -> str:
    """JSON for a tool message, with < > & escaped: still the same JSON value, but no text in it can
    close a <tool_response> fence or spell a special token such as <|im_end|>."""
    text = json.dumps(body, ensure_ascii=False, default=str)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def tool_message(call: ToolCall, step: Step) -> dict[str, Any]:
    """The result as a `tool` message: JSON data, tied to the call that asked for it."""
    body = {"error": step.error} if step.error else {"result": step.result}
    return {"role": "tool", "tool_call_id": call.id, "name": call.name, "content": as_data(body)}


def assistant_message(calls: Sequence[ToolCall], text: str = "") -> dict[str, Any]:
    return {"role": "assistant", "content": text,
            "tool_calls": [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                           for c in calls]}  # fmt: skip


def named(name: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name}}


class Agent:
    def __init__(self, model: Any, tools: Sequence[Tool], mode: str = DEFAULT_MODE, max_steps: int = 4,
                 shortlist_size: int = 3, router: Router | None = None, confirm: Confirm = never_confirm,
                 answer_tokens: int = 64, answer: bool = True):  # fmt: skip
        if max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, got {max_steps}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.model, self.mode, self.max_steps = model, mode, max_steps
        self.tools = {t.name: t for t in tools}
        self.shortlist_size, self.confirm, self.answer_tokens = shortlist_size, confirm, answer_tokens
        self.router = router or Router()
        self.write_answer = answer  # False: stop at the calls (a benchmark of calls alone)

    # ------------------------------------------------------------------------------ deciding

    def decide(
        self, conversation: list[dict[str, Any]], shortlist: Shortlist, step: int
    ) -> ChatResponse | None:
        """The model's (or router's) next move: a reply with one call, or None for "answer now"."""
        router_decides = self.mode == "router" or (self.mode == "hybrid" and step == 0)
        if self.mode == "router" and step > 0:
            return None  # the router cannot read a result: after one call, the answer
        messages = decision_messages(conversation, shortlist.tools, shortlist.nearest)
        specs = grounded_tools([self.tools[n].spec for n in shortlist.tools], conversation)
        if router_decides:
            if shortlist.best == DIRECT_ANSWER:
                return None
            tools, choice = (
                grounded_tools([self.tools[shortlist.best].spec], conversation),
                named(shortlist.best),
            )
        elif self.mode == "native":
            tools, choice = specs, "auto"
        else:  # the model decides, under the grammar: a shortlisted tool or "answer"
            tools, choice = decision_tools(specs), "required"
        return self.model.chat(messages, tools=tools, tool_choice=choice, max_tokens=self.answer_tokens,
                               temperature=0.0)  # fmt: skip

    def answer(self, conversation: list[dict[str, Any]]) -> ChatResponse:
        if not self.write_answer:
            return ChatResponse("", [], "stop", Usage(), 0.0)
        return self.model.chat(answer_messages(conversation), tools=None, tool_choice="none",
                               max_tokens=self.answer_tokens, temperature=0.0)  # fmt: skip

    # ------------------------------------------------------------------------------ running a call

    def run_call(self, call: ToolCall, shortlist: Shortlist) -> Step:
        """execute(), behind the two guarantees that do not trust the model."""
        if call.name in self.tools and call.name not in shortlist.tools:
            return Step(call.name, call.arguments, refused="shortlist",
                        error=f"{call.name} is not among the tools for this request ({', '.join(shortlist.tools)}); "
                              "it was not run")  # fmt: skip
        tool = self.tools.get(call.name)
        if tool is not None and tool.side_effects:
            try:
                arguments = tool.validate(json.loads(call.arguments or "{}"))
            except (json.JSONDecodeError, ToolError):
                return execute(call, self.tools)  # invalid: execute() reports why, nothing runs
            if not self.confirm(tool, arguments):
                return Step(call.name, arguments, refused="confirmation",
                            error=f"the user did not confirm {call.name}; nothing was done")  # fmt: skip
        return execute(call, self.tools)

    # ------------------------------------------------------------------------------ the loop

    def run(self, question: str, history: Sequence[dict[str, Any]] = (),
            on_step: Callable[[Step], None] | None = None) -> AgentResult:  # fmt: skip
        """Answer `question`; `history` holds earlier turns (chat mode); `on_step` sees each tool run."""
        conversation: list[dict[str, Any]] = [*history, {"role": "user", "content": question}]
        shortlist = self.router.shortlist(
            request_text(conversation), list(self.tools.values()), self.shortlist_size
        )
        result = AgentResult(answer="", shortlist=shortlist.tools)
        # EXERCISE stage2.tool_loop: max_steps times: reply = self.decide(...); None, no call, or a call to "answer" -> the answer (self.answer, or the reply's own words in native mode); else append the assistant message, run each call with self.run_call, append its tool message; a refused confirmation ends the turn
        for step in range(self.max_steps):
            reply = self.decide(conversation, shortlist, step)
            if reply is not None:
                result.usage.prompt_tokens += reply.usage.prompt_tokens
                result.usage.completion_tokens += reply.usage.completion_tokens
            calls = [c for c in reply.tool_calls if c.name != DIRECT_ANSWER] if reply else []
            if not calls:
                final = (
                    reply
                    if (reply and self.mode == "native" and reply.text.strip())
                    else self.answer(conversation)
                )
                if final is not reply:
                    result.usage.prompt_tokens += final.usage.prompt_tokens
                    result.usage.completion_tokens += final.usage.completion_tokens
                result.answer = final.text.strip()
                conversation.append({"role": "assistant", "content": result.answer})
                break
            conversation.append(assistant_message(calls, reply.text if reply else ""))
            for call in calls:
                result.attempted.append(call.name)
                outcome = self.run_call(call, shortlist)
                result.steps.append(outcome)
                if on_step:
                    on_step(outcome)
                conversation.append(tool_message(call, outcome))
            if any(s.refused == "confirmation" for s in result.steps):
                result.finished, result.declined = False, result.steps[-1].tool
                result.answer = (
                    f"I did not run {result.declined}: it changes something, and it was not confirmed."
                )
                break
        else:
            result.finished = False
            result.answer = f"I stopped after {self.max_steps} tool steps without reaching an answer."
        # END EXERCISE
        result.messages = conversation[len(history) :]
        return result
