"""Using any MCP server's tools in the tool loop: `ask --mcp "COMMAND ..."` or `ask --mcp URL`.

The SDK's `Client` connects to a server (a command started as a child over stdio, or a streamable
HTTP URL), lists its tools and calls them. Each listed tool becomes a `tools.Tool` whose schema is
the server's `inputSchema` and whose function sends `tools/call`; from there on the loop, the
router, the grammar and the guarantees treat it like a built-in.

Two rules for tools that someone else wrote:
- A tool is side-effecting, so it needs confirmation, unless its server marks it read-only
  (`readOnlyHint`). That hint is the server's word, not a proof: it only decides whether we ask.
- Its description is untrusted text. It is shown to the model (that is its purpose) and used by
  the router, and both can be steered by it: the poisoned-description attack in injection.py
  measures how far. The loop's shortlist and confirmation rules still hold.

The client is asynchronous and the loop is not, so the session lives on an event loop in a
background thread (anyio's blocking portal) for as long as the `with` block:

    with open_mcp_tools(parse_target("python -m stage2_prompting_tools mcp")) as tools:
        Agent(model, tools).run("What is 2 + 2?")
"""

from __future__ import annotations

import contextlib
import shlex
from collections.abc import Iterator
from typing import Any

from shared.console import BadInput, WorkFailed, one_line
from stage2_prompting_tools.tools import Tool, ToolError


def parse_target(text: str) -> Any:
    """A URL stays a URL; anything else is a command line, split like a shell would.

    A stdio server gets the SDK's minimal environment (PATH, HOME, ...: no secrets go to code we
    did not write) plus the course's own LLM_ROADMAP_* variables, which tell tools where their APIs are.
    """
    import os

    from mcp import StdioServerParameters
    from mcp.client.stdio import get_default_environment

    text = text.strip()
    if text.startswith(("http://", "https://")):
        return text
    try:
        words = shlex.split(text)
    except ValueError as e:
        raise BadInput(f"--mcp: malformed command {text!r} ({e})") from None
    if not words:
        raise BadInput("--mcp: the command is empty")
    env = {
        **get_default_environment(),
        **{k: v for k, v in os.environ.items() if k.startswith("LLM_ROADMAP_")},
    }
    return StdioServerParameters(command=words[0], args=words[1:], env=env)


def root_cause(error: BaseException) -> BaseException:
    """The first real error inside (async task groups wrap errors in ExceptionGroups)."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return error


def result_text(result: Any) -> str:
    return "\n".join(getattr(block, "text", "") for block in result.content).strip()


def as_tool(listed: Any, call: Any) -> Tool:
    """An MCP tool as a loop Tool: the server's schema; calls go over MCP; errors become ToolError."""
    read_only = bool(listed.annotations and listed.annotations.read_only_hint)

    def function(**arguments: Any) -> str:
        result = call(listed.name, arguments)
        if result.is_error:
            raise ToolError(result_text(result) or f"{listed.name} failed")
        return result_text(result)

    return Tool(name=listed.name, description=" ".join((listed.description or listed.name).split()),
                function=function, side_effects=not read_only,
                schema=dict(listed.input_schema or {"type": "object", "properties": {}}))  # fmt: skip


@contextlib.contextmanager
def open_mcp_tools(target: Any, timeout_s: float = 60.0) -> Iterator[list[Tool]]:
    """Connect to an MCP server, yield its tools as `Tool`s, disconnect (and stop a stdio server) on exit."""
    from anyio.from_thread import start_blocking_portal
    from mcp import Client

    where = target if isinstance(target, str) else " ".join([target.command, *target.args])
    with start_blocking_portal() as portal, contextlib.ExitStack() as session:
        try:
            client = session.enter_context(
                portal.wrap_async_context_manager(Client(target, read_timeout_seconds=timeout_s))
            )
            listed = portal.call(client.list_tools).tools
        except Exception as e:  # a command that does not exist, a URL that does not answer, not an MCP server
            raise WorkFailed(f"could not use the MCP server {where!r}: {one_line(root_cause(e))}") from None
        yield [as_tool(t, lambda name, args: portal.call(client.call_tool, name, args)) for t in listed]
