"""The hand-written engine's OpenAI-compatible server, through the official `openai` client.

One server per module, on the tiny random Llama (so every request takes milliseconds): the same
checks vLLM's own tests make (streamed chunks join to the non-streamed text, bad requests are 4xx
and the server still works afterwards), plus a client that disconnects mid-stream (its blocks are
freed) and the API key, which reaches the server through its environment, never its command line.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import httpx
import pytest

from stage5_serving_ops.engine.api_server import API_KEY_ENV

KEY = "engine-test-key"
pytestmark = pytest.mark.server


def _get(url: str, key: str | None = KEY) -> dict:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def server(tiny_dir, tmp_path_factory):
    """Started the way `serve --engine scratch` starts it: server.py's command, environment and watchdog."""
    from stage5_serving_ops.server import ServerConfig, VLLMServer

    config = ServerConfig(model=str(tiny_dir), port=0, api_key=KEY, served_name="tiny", engine="scratch",
                          max_model_len=256, log_file=str(tmp_path_factory.mktemp("engine") / "server.log"),
                          extra_args=["--kv-cache-gib", "0.01", "--threads", "1"], startup_timeout_s=120)  # fmt: skip
    with VLLMServer(config) as running:
        assert running.process is not None
        yield {"base": config.base_url.removesuffix("/v1"), "process": running.process, "server": running}


@pytest.fixture
def client(server):
    import openai

    return openai.OpenAI(base_url=f"{server['base']}/v1", api_key=KEY, max_retries=0, timeout=60)


HELLO = [{"role": "user", "content": "Hello there"}]


def test_models_and_the_key_stays_off_the_command_line(server, client):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    watchdog = server["process"].pid
    children = Path(f"/proc/{watchdog}/task/{watchdog}/children").read_text().split()
    assert children, "the watchdog runs the engine"
    cmdlines = [Path(f"/proc/{pid}/cmdline").read_bytes().decode() for pid in [watchdog, *children]]
    assert "stage5_serving_ops.engine.api_server" in cmdlines[1]
    assert not any(KEY in cmdline for cmdline in cmdlines)
    assert f"{API_KEY_ENV}={KEY}" in Path(f"/proc/{children[0]}/environ").read_bytes().decode()


def test_chat_streamed_chunks_join_to_the_non_streamed_text(client):
    whole = client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=12, temperature=0)
    assert whole.usage.completion_tokens == 12 and whole.choices[0].finish_reason == "length"
    stream = client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=12, temperature=0, stream=True,
                                            stream_options={"include_usage": True})  # fmt: skip
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert (
        chunks[-1].usage.completion_tokens == 12
        and chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens
    )


def test_completions_and_stop_strings(client):
    whole = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=10, temperature=0)
    text = whole.choices[0].text
    assert whole.usage.completion_tokens == 10 and text
    stop = text[2:4]
    cut = client.completions.create(
        model="tiny", prompt="Once upon a time", max_tokens=10, temperature=0, stop=[stop]
    )
    assert cut.choices[0].text == text[: text.index(stop)] and cut.choices[0].finish_reason == "stop"


@pytest.mark.parametrize(
    "body, status, message",
    [
        ({"model": "tiny", "messages": HELLO, "max_tokens": 0}, 400, "max_tokens must be in"),
        ({"model": "tiny", "messages": HELLO, "temperature": -1}, 400, "temperature must be in"),
        ({"model": "tiny", "messages": []}, 400, "messages must be a non-empty list"),
        (
            {"model": "tiny", "messages": [{"role": "robot", "content": "x"}]},
            400,
            "each message needs a role",
        ),
        ({"model": "nope", "messages": HELLO}, 404, "the model `nope` does not exist"),
        ({"model": "tiny", "messages": HELLO, "max_tokens": 300}, 400, "exceeds the context of 256"),
        (
            {"model": "tiny", "messages": HELLO, "tools": [{"type": "function"}]},
            400,
            "tool calling is not implemented",
        ),
    ],
)
def test_bad_requests_get_4xx_and_the_server_still_works(server, client, body, status, message):
    response = httpx.post(
        f"{server['base']}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}
    )
    assert response.status_code == status and message in response.json()["error"]["message"]
    assert (
        client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=2).usage.completion_tokens
        == 2
    )


def test_not_json_and_no_key(server):
    response = httpx.post(
        f"{server['base']}/v1/completions", content=b"{oops", headers={"Authorization": f"Bearer {KEY}"}
    )
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]["message"]
    assert httpx.get(f"{server['base']}/v1/models").status_code == 401


def test_a_client_that_disconnects_mid_stream_frees_its_blocks(server):
    body = {"model": "tiny", "messages": HELLO, "max_tokens": 200, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{server['base']}/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as response:  # fmt: skip
        for line in response.iter_lines():
            if line.startswith("data: {"):
                break  # one chunk, then hang up
    deadline = time.monotonic() + 30
    while (metrics := _get(f"{server['base']}/metrics"))["running"] or metrics["kv_cache_usage"] > 0:
        assert time.monotonic() < deadline, f"the aborted request still holds blocks: {metrics}"
        time.sleep(0.2)
    assert metrics["waiting"] == 0 and metrics["finished"] >= 1


def test_bench_costs_and_tracing_run_against_it(server, tmp_path):
    """The stage's load benchmark, ledger and tracing, unchanged, against the hand-written engine."""
    from shared.chat import OpenAIChatModel
    from stage5_serving_ops.cli import main
    from stage5_serving_ops.costs import Ledger, load_prices, price_for
    from stage5_serving_ops.tracing import Tracing, read_traces

    base_url = f"{server['base']}/v1"
    assert main(["bench", "--base-url", base_url, "--api-key", KEY, "--concurrency", "1,2", "--requests", "2",
                 "--max-tokens", "4", "--no-baseline", "--out", str(tmp_path), "--json"]) == 0  # fmt: skip
    report = json.loads((tmp_path / "stage5_serving.json").read_text())
    assert [lv["errors"] for lv in report["levels"]] == [0, 0] and report["levels"][1]["output_tokens"] == 8
    tracing, ledger = Tracing(tmp_path / "traces.jsonl"), Ledger(tmp_path / "costs.jsonl")
    response = tracing.chat(OpenAIChatModel("tiny", base_url, KEY), HELLO, route="hello", max_tokens=5)
    entry = ledger.record(price_for(load_prices(), "smollm2-135m-instruct"), response.usage.prompt_tokens,
                          response.usage.completion_tokens, "hello")  # fmt: skip
    tracing.shutdown()
    (span,) = [s for spans in read_traces(tmp_path / "traces.jsonl").values() for s in spans]
    assert span["attributes"]["llm.token_count.completion"] == response.usage.completion_tokens == 5
    assert entry["usd"] > 0 and ledger.summary()["by_route"]["hello"]["requests"] == 1
