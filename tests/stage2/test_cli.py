"""Stage 2 commands, and the loop against an OpenAI-compatible server with native tool calls."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from shared.console import run_cli
from stage2_prompting_tools.cli import main


def run_json(capsys, *argv: str):
    code = run_cli(main, [*argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


@pytest.mark.exercise("stage2.type_to_schema", "stage2.schema_from_signature")
def test_tools_json_lists_every_schema(capsys):
    code, specs = run_json(capsys, "tools")
    assert code == 0 and {s["function"]["name"] for s in specs} >= {"calculator", "get_weather"}


@pytest.mark.parametrize("argv, message", [(["ask", ""], "question is empty"),
                                           (["ask", "--tools", "nope", "hi"], "unknown tool"),
                                           (["ask", "--max-steps", "0", "hi"], "--max-steps")])  # fmt: skip
def test_bad_input_exits_2(argv, message):
    run = subprocess.run(
        [sys.executable, "-m", "stage2_prompting_tools", *argv], capture_output=True, text=True
    )
    assert run.returncode == 2 and message in run.stderr and "Traceback" not in run.stderr


class NativeToolServer(BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint that calls the calculator, then answers from its result."""

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        last = body["messages"][-1]
        if last["role"] == "tool":
            message = {"role": "assistant", "content": f"It is {json.loads(last['content'])['result']}."}
            finish = "stop"
        else:
            assert any(t["function"]["name"] == "calculator" for t in body["tools"])
            message = {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function",
                       "function": {"name": "calculator", "arguments": '{"expression": "6*7"}'}}]}  # fmt: skip
            finish = "tool_calls"
        data = json.dumps(
            {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110},
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.mark.exercise(
    "stage2.tool_loop", "stage2.execute_call", "stage2.type_to_schema", "stage2.schema_from_signature"
)
def test_ask_against_a_server_uses_native_tool_calls(capsys):
    server = ThreadingHTTPServer(("127.0.0.1", 0), NativeToolServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        code, out = run_json(capsys, "ask", "--base-url", url, "What is 6 times 7?")
    finally:
        server.shutdown()
    assert code == 0 and out["answer"] == "It is 42."
    assert out["steps"] == [
        {"tool": "calculator", "arguments": {"expression": "6*7"}, "result": "42", "error": None}
    ]
    assert out["usage"] == {"prompt_tokens": 200, "completion_tokens": 20}


@pytest.mark.slow
@pytest.mark.exercise(
    "stage2.tool_loop",
    "stage2.execute_call",
    "stage2.type_to_schema",
    "stage2.schema_from_signature",
    "stage2.select_tool",
)
def test_ask_with_the_real_model_end_to_end(capsys):
    code, out = run_json(capsys, "ask", "What is 23 times 47?")
    assert code == 0
    assert set(out) >= {"answer", "steps", "usage"}
    assert out["steps"][0]["tool"] == "calculator" and out["steps"][0]["result"] == "1081"
    assert "1081" in out["answer"].replace(",", "")
