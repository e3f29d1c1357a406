"""served.py: the same calls against stage 5's real vLLM server (started once per session), and the launcher."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

from stage2_prompting_tools.served import VLLMProcess, required_probe
from tests.conftest import VLLM_API_KEY


def test_the_launcher_stops_the_whole_tree_even_a_child_in_its_own_session(tmp_path):
    """Like `serve`: it prints a URL and starts a child in a new session (vLLM's own process group)."""
    script = tmp_path / "fake_serve.py"
    script.write_text(
        textwrap.dedent("""
        import subprocess, sys, time
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
        print("http://127.0.0.1:1/v1", flush=True)
        time.sleep(600)
    """)
    )
    server = VLLMProcess(command=[sys.executable, str(script)], startup_timeout_s=60).start()
    assert server.base_url == "http://127.0.0.1:1/v1" and len(server.alive()) == 2
    server.stop(grace_s=1)
    assert server.alive() == []


@pytest.mark.server
@pytest.mark.exercise(
    "stage2.tool_loop", "stage2.shortlist", "stage2.ground_schema", "stage2.constrained_decoding"
)
def test_ask_against_the_real_server(vllm_server, capsys):
    from shared.console import run_cli
    from stage2_prompting_tools.cli import main

    question = "I had 1250 stickers and gave away 387. How many are left?"
    code = run_cli(
        main, ["ask", "--base-url", vllm_server.base_url, "--api-key", VLLM_API_KEY, "--json", question]
    )
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["steps"][0]["tool"] == "calculator" and out["steps"][0]["result"] == "863"


@pytest.mark.server
@pytest.mark.exercise(
    "stage2.tool_loop", "stage2.shortlist", "stage2.ground_schema", "stage2.constrained_decoding"
)
def test_served_calls_are_valid_on_the_shipped_suite(served_model, router):
    """The grammar goes to the server as response_format: every call made is valid, as in process (first 8
    tasks; the bench runs all 36). In `model` mode the grammar also offers `answer`, so the model may call
    nothing: that is a decision (scored by right_tool), not an invalid call."""
    from stage2_prompting_tools.tool_eval import run_suite

    report = run_suite(served_model, "shipped", "model", router, limit=8, answer=False)
    called = [r for r in report["rows"] if r["calls"]]
    assert len(called) >= 6, report["rows"]
    assert all(r["valid_call"] for r in called), [r for r in called if not r["valid_call"]]


@pytest.mark.server
@pytest.mark.exercise(
    "stage2.tool_loop", "stage2.shortlist", "stage2.ground_schema", "stage2.constrained_decoding"
)
def test_required_needs_strict_to_give_arguments_the_schema_accepts(served_model):
    """Why `tool_choice="required"` broke: vLLM leaves the arguments free unless the tool is strict."""
    probe = required_probe(served_model)
    assert probe["strict"]["valid"], probe


@pytest.mark.server
@pytest.mark.exercise(
    "stage2.tool_loop", "stage2.shortlist", "stage2.ground_schema", "stage2.constrained_decoding"
)
def test_the_served_model_runs_no_tool_the_page_asks_for(served_model, router):
    from stage2_prompting_tools.injection import ATTACKS, run_injection_suite

    report = run_injection_suite(served_model, mode="model", router=router, attacks=ATTACKS[:3])
    assert report["ran"] == 0.0, report["rows"]
