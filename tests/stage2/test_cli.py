"""Stage 2 commands: bad input in one line, the loop against an OpenAI-compatible server, the real model."""

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


def cli(*argv: str, stdin: str = "", env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stage2_prompting_tools", *argv], capture_output=True, text=True,
                          input=stdin, timeout=600, env=env)  # fmt: skip


@pytest.mark.exercise("stage2.type_to_schema", "stage2.schema_from_signature")
def test_tools_json_lists_every_schema(capsys):
    code, specs = run_json(capsys, "tools")
    assert code == 0 and {s["function"]["name"] for s in specs} >= {"calculator", "get_weather", "save_note"}


@pytest.mark.parametrize("argv, message", [(["ask", ""], "question is empty"),
                                           (["ask", "--tools", "nope", "hi"], "unknown tool"),
                                           (["ask", "--max-steps", "0", "hi"], "--max-steps"),
                                           (["ask", "--mcp", '"unbalanced', "hi"], "malformed command"),
                                           (["ask", "--mcp", "  ", "hi"], "command is empty"),
                                           (["mcp", "--http", "70000"], "--http"),
                                           (["bench", "--parts", "vibes"], "--parts")])  # fmt: skip
def test_bad_input_is_one_line_and_exit_2(argv, message):
    run = cli(*argv)
    assert run.returncode == 2 and message in run.stderr and "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


@pytest.mark.exercise("stage2.shortlist")
def test_a_failed_mcp_server_or_server_is_one_line_and_exit_1():
    run = cli("ask", "--mcp", "no-such-mcp-server-command", "hi")
    assert (
        run.returncode == 1 and "could not use the MCP server" in run.stderr and "Traceback" not in run.stderr
    )
    run = cli("ask", "--base-url", "http://127.0.0.1:9/v1", "What is 2 + 2?")
    assert run.returncode == 1 and "could not reach http://127.0.0.1:9/v1" in run.stderr
    assert "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1


class NativeToolServer(BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint with native tool calls: it calls what the request allows, then answers."""

    requests: list[dict] = []

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.requests.append(body)
        last = body["messages"][-1]
        if body.get("tools") and last["role"] != "tool":
            name = body["tools"][0]["function"]["name"]
            arguments = {"calculator": '{"expression": "6*7"}', "save_note": '{"title": "x", "text": "y"}'}[
                name
            ]
            message = {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function",
                       "function": {"name": name, "arguments": arguments}}]}  # fmt: skip
            finish = "tool_calls"
        else:
            result = json.loads(last["content"]).get("result") if last["role"] == "tool" else "?"
            message, finish = {"role": "assistant", "content": f"It is {result}."}, "stop"
        data = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                           "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                           "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}}).encode()  # fmt: skip
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def native_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), NativeToolServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


@pytest.mark.exercise("stage2.tool_loop", "stage2.execute_call", "stage2.shortlist", "stage2.ground_schema",
                       "stage2.type_to_schema", "stage2.schema_from_signature")  # fmt: skip
def test_ask_against_a_server_uses_its_native_tool_calls(capsys, native_server):
    code, out = run_json(capsys, "ask", "--base-url", native_server, "--mode", "native", "--tools", "calculator",
                         "What is 6 times 7?")  # fmt: skip
    assert code == 0 and out["steps"] == [
        {
            "tool": "calculator",
            "arguments": {"expression": "6*7"},
            "result": "42",
            "error": None,
            "refused": None,
        }
    ]
    assert out["answer"] == "It is 42." and out["usage"] == {"prompt_tokens": 200, "completion_tokens": 20}
    sent = NativeToolServer.requests[-2]
    assert sent["tool_choice"] == "auto" and sent["tools"][0]["function"]["strict"] is True


@pytest.mark.exercise("stage2.tool_loop", "stage2.shortlist", "stage2.ground_schema", "stage2.execute_call")
def test_a_refused_confirmation_exits_1_and_writes_nothing(native_server, tmp_path):
    import os

    env = {**os.environ, "LLM_ROADMAP_ARTIFACTS": str(tmp_path / "artifacts")}
    run = cli("ask", "--base-url", native_server, "--mode", "native", "--tools", "save_note", "Save a note x: y",
              env=env)  # fmt: skip
    assert (
        run.returncode == 1 and "save_note was not confirmed" in run.stderr and "Traceback" not in run.stderr
    )
    assert not (tmp_path / "artifacts").exists(), "nothing was written"
    run = cli("ask", "--base-url", native_server, "--mode", "native", "--tools", "save_note", "--yes",
              "Save a note x: y", env=env)  # fmt: skip
    assert (
        run.returncode == 0
        and (tmp_path / "artifacts" / "stage2" / "notes" / "x.md").read_text() == "# x\n\ny\n"
    )


@pytest.mark.slow
@pytest.mark.exercise(*("stage2.tool_loop", "stage2.execute_call", "stage2.shortlist", "stage2.ground_schema",
                        "stage2.constrained_decoding"))  # fmt: skip
def test_the_demo_question_end_to_end(capsys):
    """`make demo`'s stage 2 question, as a new user types it: a whole call, the right figure."""
    code, out = run_json(capsys, "ask", "I had 1250 stickers and gave away 387. How many are left?")
    assert code == 0 and out["steps"][0]["tool"] == "calculator" and out["steps"][0]["result"] == "863"
    assert "863" in out["answer"].replace(",", "")


@pytest.mark.slow
@pytest.mark.exercise(
    "stage2.tool_loop", "stage2.shortlist", "stage2.ground_schema", "stage2.constrained_decoding"
)
def test_chat_remembers_the_conversation(sample_apis):
    """A follow-up that only makes sense with the first question: the REPL passes the whole conversation."""
    run = cli("chat", stdin="What's the weather like in Lisbon today?\nand in Paris?\n/quit\n")
    assert run.returncode == 0, run.stderr[-2000:]
    calls = [line for line in run.stderr.splitlines() if line.startswith("tool ")]
    assert len(calls) == 2 and '"city": "Lisbon"' in calls[0] and '"city": "Paris"' in calls[1], calls
    answers = [line for line in run.stdout.splitlines() if line.startswith("assistant>")]
    assert len(answers) == 2
