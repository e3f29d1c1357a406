"""server.py against the real vLLM: the OpenAI client, streaming, bad requests, API keys, the load sweep."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from shared.console import BadInput, WorkFailed
from stage5_serving_ops.server import (
    ServerConfig,
    VLLMServer,
    command,
    engine_dtype_for,
    environment,
    is_loopback,
    watched,
)
from stage5_serving_ops.watchdog import process_group_members

from .conftest import API_KEY

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("localhost", True), ("::1", True),
                                             ("0.0.0.0", False), ("192.168.1.5", False), ("example.org", False)])  # fmt: skip
def test_loopback_detection(host, loopback):
    assert is_loopback(host) is loopback


def test_a_public_host_needs_an_api_key():
    with pytest.raises(BadInput, match="without --api-key"):
        ServerConfig(host="0.0.0.0")
    assert ServerConfig(host="0.0.0.0", api_key="k", port=8123).base_url == "http://127.0.0.1:8123/v1"


def test_the_command_line_is_the_documented_one_and_holds_no_secret(tmp_path):
    config = ServerConfig(port=8123, api_key="s3cret", log_file=str(tmp_path / "log"))
    args = command(config, tmp_path, gpu=False)
    assert args[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert "--enforce-eager" in args and "--api-key" not in args and "s3cret" not in " ".join(args)
    assert args[args.index("--served-model-name") + 1] == "smollm2-135m-instruct"
    assert "--enforce-eager" not in command(config, tmp_path, gpu=True)
    env = environment(config, gpu=False, base={"PATH": "/bin"})
    assert env["VLLM_API_KEY"] == "s3cret" and env["VLLM_CPU_KVCACHE_SPACE"] == "2"
    keyless = ServerConfig(port=8123, log_file=str(tmp_path / "log"))
    assert "VLLM_API_KEY" not in environment(keyless, gpu=False, base={"VLLM_API_KEY": "left-over"})
    wrapped = watched(args, grace_s=5)
    assert wrapped[1:3] == ["-m", "stage5_serving_ops.watchdog"] and wrapped[-len(args) :] == args


@pytest.mark.parametrize("engine", ["vllm", "scratch"])
def test_serve_dtype_reaches_the_engine_command_line(engine, tmp_path):
    from stage5_serving_ops.cli import build_parser
    from stage5_serving_ops.launch import server_config

    def dtype_of(*argv: str) -> str | None:
        args = build_parser().parse_args(["serve", "--engine", engine, "--port", "8123", *argv])
        line = command(server_config(args), tmp_path, gpu=False)
        return line[line.index("--dtype") + 1] if "--dtype" in line else None

    assert dtype_of("--dtype", "float32") == "float32"
    assert dtype_of("--dtype", "bfloat16") == "bfloat16"
    assert dtype_of() == engine_dtype_for("auto", gpu=False)  # auto: chosen for this machine's CPU
    with pytest.raises(SystemExit):
        dtype_of("--dtype", "float16")


def test_auto_dtype_is_bfloat16_only_where_the_processor_computes_it():
    avx2 = "flags\t\t: fpu sse2 avx avx2 fma avx512f\n"
    assert (
        engine_dtype_for("auto", gpu=False, cpuinfo=avx2) == "float32"
    )  # bfloat16 emulated: 5x slower prefill
    assert engine_dtype_for("auto", gpu=False, cpuinfo=avx2 + "flags : avx512_bf16\n") == "bfloat16"
    assert engine_dtype_for("auto", gpu=False, cpuinfo="Features : fp asimd bf16\n") == "bfloat16"  # Arm
    assert engine_dtype_for("auto", gpu=True, cpuinfo=avx2) is None  # a GPU: the engine's own default
    assert engine_dtype_for("float32", gpu=True) == "float32"
    with pytest.raises(BadInput, match="--dtype"):
        ServerConfig(port=8123, dtype="float16")


def test_serve_refuses_a_public_host_without_a_key_in_one_line():
    done = subprocess.run([sys.executable, "-m", "stage5_serving_ops", "serve", "--host", "0.0.0.0"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2 and "without --api-key" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.server
def test_a_server_that_dies_shows_its_log_tail(tmp_path):
    config = ServerConfig(port=0, log_file=str(tmp_path / "log"), extra_args=["--no-such-flag"])
    with pytest.raises(WorkFailed, match="exited with code") as failure:
        VLLMServer(config).start()
    assert "no-such-flag" in str(failure.value), "the log tail names the cause"


@pytest.mark.server
def test_chat_completion_at_temperature_zero(client, vllm_server):
    replies = [client.chat.completions.create(model="smollm2-135m-instruct", messages=FRANCE, max_tokens=16,
                                              temperature=0) for _ in range(2)]  # fmt: skip
    text = replies[0].choices[0].message.content
    assert "Paris" in text and replies[1].choices[0].message.content == text
    assert replies[0].usage.prompt_tokens > 5 and 0 < replies[0].usage.completion_tokens <= 16


@pytest.mark.server
def test_streamed_chunks_join_to_the_full_answer(client):
    whole = client.chat.completions.create(model="smollm2-135m-instruct", messages=FRANCE, max_tokens=24,
                                           temperature=0).choices[0].message.content  # fmt: skip
    chunks = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="smollm2-135m-instruct", messages=FRANCE, max_tokens=24, temperature=0, stream=True) if c.choices]  # fmt: skip
    assert len([c for c in chunks if c]) > 1 and "".join(chunks) == whole


@pytest.mark.server
def test_bad_requests_get_4xx_and_the_server_keeps_answering(client):
    import openai

    with pytest.raises(openai.APIStatusError) as unknown:
        client.chat.completions.create(model="no-such-model", messages=FRANCE, max_tokens=4)
    with pytest.raises(openai.APIStatusError) as negative:
        client.chat.completions.create(model="smollm2-135m-instruct", messages=FRANCE, max_tokens=-1)
    assert 400 <= unknown.value.status_code < 500 and 400 <= negative.value.status_code < 500
    ok = client.chat.completions.create(model="smollm2-135m-instruct", messages=FRANCE, max_tokens=4)
    assert ok.choices[0].message.content


@pytest.mark.server
def test_the_prompt_is_counted_before_sending_as_the_server_bills_it(client):
    from stage5_serving_ops.costs import prompt_token_counter

    count = prompt_token_counter("smollm2-135m-instruct")
    for messages in (FRANCE, [{"role": "system", "content": "Be brief."}, *FRANCE]):
        reply = client.chat.completions.create(model="smollm2-135m-instruct", messages=messages, max_tokens=1)
        assert count(messages) == reply.usage.prompt_tokens


@pytest.mark.server
def test_the_key_is_in_no_process_command_line(vllm_server):
    """Every process of the server's group (watchdog, API server, engine, workers): the key is not in
    /proc/PID/cmdline, which any local user can read; the API server has it in its environment."""
    members = process_group_members(vllm_server.pgid)
    assert len(members) >= 3
    environments = []
    for pid in members:
        assert API_KEY.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes(), pid
        environments.append(Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"))
    assert any(f"VLLM_API_KEY={API_KEY}".encode() in env for env in environments)


@pytest.mark.server
def test_a_request_without_the_key_is_refused(vllm_server):
    import openai

    for key in ("wrong-key", "EMPTY"):
        stranger = openai.OpenAI(base_url=vllm_server.base_url, api_key=key, max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            stranger.chat.completions.create(model="smollm2-135m-instruct", messages=FRANCE, max_tokens=4)


@pytest.mark.server
@pytest.mark.exercise("stage5.percentile", "stage5.inter_token_gaps")
def test_the_bench_sweep_reports_every_field(vllm_server, tmp_path):
    from stage5_serving_ops.cli import main

    assert main(["bench", "--base-url", vllm_server.base_url, "--api-key", API_KEY, "--concurrency", "1,2",
                 "--requests", "2", "--max-tokens", "8", "--out", str(tmp_path), "--json"]) == 0  # fmt: skip
    import json

    report = json.loads((tmp_path / "stage5_serving.json").read_text())
    assert [level["concurrency"] for level in report["levels"]] == [1, 2]
    for level in report["levels"]:
        assert level["errors"] == 0 and level["output_tokens"] > 0
        for key in ("output_tokens_per_s", "requests_per_s", "ttft_p50_s", "ttft_p95_s", "itl_p50_s", "itl_p95_s",
                    "e2e_p50_s", "e2e_p95_s"):  # fmt: skip
            assert level[key] > 0, key
        assert level["ttft_p50_s"] <= level["e2e_p50_s"]
    assert report["baseline"]["output_tokens_per_s"] > 0 and "2" in report["speedup_over_baseline"]
    assert (tmp_path / "stage5_serving.png").stat().st_size > 10_000


@pytest.mark.server
@pytest.mark.exercise("stage5.cost_per_request", "stage5.local_price")
def test_traced_and_priced_calls_through_the_server(vllm_server, tmp_path):
    from shared.chat import OpenAIChatModel
    from stage5_serving_ops.costs import Ledger, load_prices, price_for
    from stage5_serving_ops.tracing import Tracing, read_traces

    tracing, ledger = Tracing(tmp_path / "traces.jsonl"), Ledger(tmp_path / "costs.jsonl")
    model = OpenAIChatModel("smollm2-135m-instruct", vllm_server.base_url, API_KEY)
    response = tracing.chat(model, FRANCE, route="geo", max_tokens=8)
    entry = ledger.record(price_for(load_prices(), model.name), response.usage.prompt_tokens,
                          response.usage.completion_tokens, "geo")  # fmt: skip
    tracing.shutdown()
    (span,) = [s for spans in read_traces(tmp_path / "traces.jsonl").values() for s in spans]
    assert span["attributes"]["llm.token_count.completion"] == response.usage.completion_tokens > 0
    assert span["attributes"]["llm.token_count.prompt"] == response.usage.prompt_tokens
    assert entry["usd"] > 0 and ledger.summary()["by_route"]["geo"]["requests"] == 1


def test_no_process_outlives_stop(tmp_path):
    """stop() ends the whole group: here a watched stand-in whose own child ignores SIGTERM."""
    engine = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    stand_in = [sys.executable, "-c", f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {engine!r}]); "
                "time.sleep(60)"]  # fmt: skip
    server = VLLMServer(ServerConfig(port=0, log_file=str(tmp_path / "log")))
    server.process = subprocess.Popen(watched(stand_in, grace_s=2), start_new_session=True)
    pgid = server.pgid
    deadline = time.monotonic() + 20
    while len(process_group_members(pgid)) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(process_group_members(pgid)) == 3, "watchdog, stand-in, its child"
    server.stop(grace_s=5)
    time.sleep(0.5)
    assert process_group_members(pgid) == [], "all gone (zombies awaiting reaping do not count)"
