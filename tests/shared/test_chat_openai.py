"""OpenAIChatModel against a small OpenAI-compatible server started here on 127.0.0.1.

The server replays recorded responses in the shapes vLLM returns, so these tests check the
client side exactly: request fields, tool calls, streaming, and HTTP errors as clear exceptions.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from shared.chat import ChatError, OpenAIChatModel, open_chat_model
from shared.console import BadInput

RECORDED = json.loads((Path(__file__).parent / "data" / "openai_responses.json").read_text())


class RecordedOpenAI(BaseHTTPRequestHandler):
    requests: list[dict] = []

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        body["_authorization"] = self.headers.get("Authorization")
        self.requests.append(body)
        if self.path != "/v1/chat/completions":
            return self._send(404, {"error": {"message": f"no route {self.path}"}})
        if body["model"] != "smollm2-135m-instruct":
            return self._send(404, RECORDED["model_not_found"])
        if body.get("stream"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            for chunk in RECORDED["stream_chunks"]:
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")
            return None
        return self._send(200, RECORDED["tool_call" if body.get("tools") else "answer"])


@pytest.fixture(scope="module")
def base_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), RecordedOpenAI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def test_chat_returns_text_usage_and_sends_the_request_fields(base_url):
    model = OpenAIChatModel("smollm2-135m-instruct", base_url, api_key="secret")
    response = model.chat(QUESTION, max_tokens=16, temperature=0.0, seed=7, stop=["\n\n"])
    assert response.text == "The capital of France is Paris."
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (37, 8)
    assert response.finish_reason == "stop" and response.tool_calls == []
    sent = RecordedOpenAI.requests[-1]
    assert sent["max_tokens"] == 16 and sent["seed"] == 7 and sent["stop"] == ["\n\n"]
    assert sent["_authorization"] == "Bearer secret"


def test_tool_call_is_parsed(base_url):
    model = OpenAIChatModel("smollm2-135m-instruct", base_url)
    response = model.chat([{"role": "user", "content": "Weather in Lisbon?"}], tools=[WEATHER_TOOL])
    assert response.finish_reason == "tool_calls"
    [call] = response.tool_calls
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Lisbon"}
    assert call.id == "chatcmpl-tool-4c2e"
    assert RecordedOpenAI.requests[-1]["tools"] == [WEATHER_TOOL]


def test_stream_joins_to_the_full_text(base_url):
    model = OpenAIChatModel("smollm2-135m-instruct", base_url)
    deltas = list(model.stream(QUESTION))
    assert len(deltas) == 3 and "".join(deltas) == "The capital of France is Paris."


def test_http_error_becomes_a_clear_one_line_exception(base_url):
    model = OpenAIChatModel("no-such-model", base_url)
    with pytest.raises(ChatError) as info:
        model.chat(QUESTION)
    message = str(info.value)
    assert "HTTP 404" in message and "does not exist" in message and "\n" not in message


def test_unreachable_server_is_a_clear_exception():
    model = OpenAIChatModel("smollm2-135m-instruct", "http://127.0.0.1:9/v1", timeout=5)
    with pytest.raises(ChatError, match="could not reach"):
        model.chat(QUESTION)


def test_bad_sampling_values_are_refused_before_any_request(base_url):
    model = OpenAIChatModel("smollm2-135m-instruct", base_url)
    before = len(RecordedOpenAI.requests)
    with pytest.raises(BadInput, match="top_p"):
        model.chat(QUESTION, top_p=1.5)
    assert len(RecordedOpenAI.requests) == before


def test_open_chat_model_picks_the_http_backend_for_a_base_url(base_url):
    model = open_chat_model(base_url=base_url)
    assert isinstance(model, OpenAIChatModel) and model.name == "smollm2-135m-instruct"
