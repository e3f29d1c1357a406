"""MCP: the course's tools served with the official SDK, checked with the SDK's own client, over stdio and HTTP."""

from __future__ import annotations

import shlex
import socket
import subprocess
import sys
import time

import anyio
import pytest
from mcp import Client, StdioServerParameters

from stage2_prompting_tools.mcp_client import open_mcp_tools, parse_target

SERVER = [sys.executable, "-m", "stage2_prompting_tools", "mcp"]


async def round_trip(client: Client) -> None:
    listed = {t.name: t for t in (await client.list_tools()).tools}
    assert {"calculator", "get_weather", "save_note"} <= set(listed)
    assert listed["calculator"].input_schema["properties"]["expression"]["pattern"].startswith("^")
    assert (
        listed["save_note"].annotations.destructive_hint and listed["calculator"].annotations.read_only_hint
    )
    result = await client.call_tool("calculator", {"expression": "23*47"})
    assert not result.is_error and result.content[0].text == "1081"
    bad = await client.call_tool("calculator", {"expression": "__import__('os')"})
    assert bad.is_error and "does not match" in bad.content[0].text, "a bad argument is a tool error"
    unknown = await client.call_tool("delete_everything", {})
    assert unknown.is_error and "unknown tool" in unknown.content[0].text
    again = await client.call_tool("calculator", {"expression": "2+2"})
    assert again.content[0].text == "4", "the server is still up after the errors"


@pytest.mark.exercise("stage2.type_to_schema", "stage2.schema_from_signature")
def test_stdio_round_trip_with_the_sdk_client():
    async def run() -> None:
        async with Client(StdioServerParameters(command=SERVER[0], args=SERVER[1:])) as client:
            await round_trip(client)

    anyio.run(run)


@pytest.mark.exercise("stage2.type_to_schema", "stage2.schema_from_signature")
def test_streamable_http_round_trip_with_the_sdk_client():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [*SERVER, "--http", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 60
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            assert server.poll() is None and time.monotonic() < deadline, server.stderr.read().decode()[-500:]
            time.sleep(0.2)

        async def run() -> None:
            async with Client(f"http://127.0.0.1:{port}/mcp") as client:
                await round_trip(client)

        anyio.run(run)
    finally:
        server.terminate()
        server.wait(timeout=20)


@pytest.mark.exercise("stage2.type_to_schema", "stage2.schema_from_signature")
def test_an_mcp_servers_tools_become_loop_tools():
    with open_mcp_tools(parse_target(shlex.join(SERVER) + " --tools calculator,save_note")) as tools:
        by_name = {t.name: t for t in tools}
        assert set(by_name) == {"calculator", "save_note"}
        assert by_name["save_note"].side_effects and not by_name["calculator"].side_effects
        assert by_name["calculator"](expression="6*7") == "42"
        from stage2_prompting_tools.tools import ToolError

        with pytest.raises(ToolError, match="division by zero"):
            by_name["calculator"](expression="1/0")


@pytest.mark.slow
@pytest.mark.exercise(
    "stage2.tool_loop", "stage2.shortlist", "stage2.ground_schema", "stage2.constrained_decoding"
)
def test_ask_uses_an_mcp_servers_tools(capsys):
    import json

    from shared.console import run_cli
    from stage2_prompting_tools.cli import main

    code = run_cli(main, ["ask", "--mcp", shlex.join(SERVER), "--json", "What is 23 times 47?"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["steps"][0]["tool"] == "calculator" and out["steps"][0]["result"] == "1081"
