"""Serving the course's tools over the Model Context Protocol (MCP), with the official `mcp` SDK.

Function calling (tools.py) describes tools to *one* model inside *one* program. MCP makes the tools
a service: a server lists them (`tools/list`: name, description, JSON schema of the input, hints
such as "read-only") and runs them (`tools/call`), over stdio (the host starts the server as a
child process and speaks JSON-RPC on its stdin/stdout) or streamable HTTP. Any MCP host (an IDE,
a desktop assistant, `ask --mcp` here) can then use any server's tools without code for each.

What it adds: tools written once and shared across hosts and languages; discovery at run time;
a process (or machine) boundary between the model's host and the code that touches the world.
What it risks: the host now runs tools it did not write, described by text it did not write. A
tool's description goes straight into the model's prompt, so a malicious server can hide
instructions there ("tool poisoning": README section 7 measures one), and a server can change its
tools between two listings. Treat every server's descriptions as untrusted input and its tools as
side-effecting unless told otherwise (mcp_client.py does both).

The server is the SDK's low-level `Server` with two handlers, so the protocol stays visible:
`tools/list` returns each tool's own JSON schema (the same one the grammar enforces in process), and
`tools/call` validates the arguments and runs the tool. A failure (bad arguments, a tool error)
comes back as a result with `isError: true` and the message, which the model can read, never as a
crash of the server.

    python -m stage2_prompting_tools mcp                 # stdio: a host starts it as a command
    python -m stage2_prompting_tools mcp --http 8765     # streamable HTTP at http://127.0.0.1:8765/mcp
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from stage2_prompting_tools.tools import Tool, ToolError


def build_server(tools: Sequence[Tool], name: str = "llm-roadmap-tools") -> Any:
    """An MCP server (SDK low-level `Server`) listing and running `tools`."""
    import anyio
    from mcp import types
    from mcp.server.lowlevel import Server

    by_name = {t.name: t for t in tools}

    def describe(tool: Tool) -> Any:
        hints = types.ToolAnnotations(
            read_only_hint=not tool.side_effects, destructive_hint=tool.side_effects
        )
        return types.Tool(name=tool.name, description=tool.description, input_schema=tool.parameters,
                          annotations=hints)  # fmt: skip

    async def list_tools(ctx: Any, params: Any) -> Any:
        return types.ListToolsResult(tools=[describe(t) for t in by_name.values()])

    async def call_tool(ctx: Any, params: Any) -> Any:
        def failed(message: str) -> Any:
            return types.CallToolResult(content=[types.TextContent(type="text", text=message)], is_error=True)

        tool = by_name.get(params.name)
        if tool is None:
            return failed(f"unknown tool {params.name!r}; available: {', '.join(by_name)}")
        try:  # tools are blocking functions: run them off the event loop
            result = await anyio.to_thread.run_sync(lambda: tool(**(params.arguments or {})))
        except ToolError as e:
            return failed(str(e))
        except Exception as e:  # a bug in a tool is the tool's error, not the server's
            return failed(f"{type(e).__name__}: {e}")
        text = result if isinstance(result, str) else json.dumps(result, ensure_ascii=False, default=str)
        return types.CallToolResult(content=[types.TextContent(type="text", text=text)])

    return Server(name, on_list_tools=list_tools, on_call_tool=call_tool)


def serve_stdio(server: Any) -> None:
    """JSON-RPC over this process's stdin/stdout, until the host closes stdin."""
    import anyio
    from mcp.server.stdio import stdio_server

    async def run() -> None:
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())

    anyio.run(run)


def serve_http(server: Any, port: int, host: str = "127.0.0.1") -> None:
    """Streamable HTTP at http://HOST:PORT/mcp (the SDK turns on DNS-rebinding protection for loopback)."""
    import uvicorn

    uvicorn.run(server.streamable_http_app(host=host), host=host, port=port, log_level="warning")
