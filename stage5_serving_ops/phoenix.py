"""Arize Phoenix, running: the trace browser where a wrong answer is followed back to its cause.

tracing.py records each request as OpenTelemetry spans named in the OpenInference convention; any
OTLP endpoint can receive them. Phoenix is the open-source one built for LLM apps: it shows each
trace as a tree (the RAG chain, its retrieval with the document ids and scores, the LLM call with
its prompt, reply and token counts, the tool call with its arguments), so that "the answer was
wrong" becomes "the retriever returned the wrong chunk" or "the model ignored a good one".

Phoenix pins a FastAPI that vLLM's CPU build refuses, so it lives in its own virtual environment
(`make phoenix-venv`, `.venv-phoenix/`, about 850 MB) and runs as a separate process on 127.0.0.1,
receiving spans over OTLP/HTTP at `/v1/traces` and answering its REST API at `/v1/projects/...`.

    make phoenix                                                   # Phoenix on http://127.0.0.1:6006
    python -m stage5_serving_ops demo --otlp http://127.0.0.1:6006/v1/traces
    python -m stage5_serving_ops.phoenix screenshot --out stage5_serving_ops/assets/phoenix_trace.png
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from shared import paths
from shared.console import BadInput, WorkFailed, console, run_cli

PHOENIX_VENV_ENV = "LLM_ROADMAP_PHOENIX_VENV"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]  # fmt: skip


def phoenix_executable() -> Path | None:
    venv = Path(os.environ.get(PHOENIX_VENV_ENV) or paths.REPO_ROOT / ".venv-phoenix")
    exe = venv / "bin" / "phoenix"
    return exe if exe.is_file() else None


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PhoenixServer:
    """Phoenix on 127.0.0.1 with its data in a temporary folder: `with PhoenixServer() as phoenix: ...`."""

    def __init__(
        self, port: int = 0, working_dir: Path | None = None, startup_timeout_s: float = 180.0
    ) -> None:
        self.port = port or _free_port()
        self.own_dir = working_dir is None
        self.working_dir = Path(working_dir or tempfile.mkdtemp(prefix="phoenix-"))
        self.startup_timeout_s = startup_timeout_s
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def otlp_endpoint(self) -> str:
        return f"{self.url}/v1/traces"

    def start(self) -> PhoenixServer:
        exe = phoenix_executable()
        if exe is None:
            raise WorkFailed(
                "Phoenix is not installed: run `make phoenix-venv` (its own venv, .venv-phoenix/)"
            )
        env = {**os.environ, "PHOENIX_HOST": "127.0.0.1", "PHOENIX_PORT": str(self.port),
               "PHOENIX_GRPC_PORT": str(_free_port()), "PHOENIX_WORKING_DIR": str(self.working_dir),
               "PHOENIX_TELEMETRY_ENABLED": "false"}  # fmt: skip
        log = open(self.working_dir / "phoenix.log", "wb")  # noqa: SIM115 (the child keeps writing to it)
        self.process = subprocess.Popen([str(exe), "serve"], stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=env, start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            if self.process.poll() is not None:
                tail = (self.working_dir / "phoenix.log").read_text(errors="replace")[-1500:]
                self.stop()
                raise WorkFailed(
                    f"Phoenix exited with code {self.process.returncode if self.process else '?'}: {tail}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise WorkFailed(f"Phoenix was not healthy after {self.startup_timeout_s:.0f} s")
            time.sleep(0.5)

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=10) as response:
            return json.loads(response.read())

    def project_id(self, name: str) -> str | None:
        return next((p["id"] for p in self.get("/v1/projects")["data"] if p["name"] == name), None)

    def spans(self, project: str, wait_s: float = 20.0, at_least: int = 1) -> list[dict[str, Any]]:
        """The project's spans through Phoenix's REST API (waiting for the exporter's batch to land)."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                found = self.get(f"/v1/projects/{project}/spans?limit=100")["data"]
            except urllib.error.HTTPError:
                found = []  # the project appears with its first span
            if len(found) >= at_least or time.monotonic() > deadline:
                return found
            time.sleep(0.5)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self.own_dir:
            shutil.rmtree(self.working_dir, ignore_errors=True)

    def __enter__(self) -> PhoenixServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def screenshot(url: str, out: Path, width: int = 1500, height: int = 950, settle_ms: int = 15000) -> Path:
    """A PNG of a page as headless Chromium renders it (Debian's `chromium` package)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise WorkFailed("headless Chromium is not installed: `apt-get install chromium` (Debian's package)")
    out = Path(out)
    paths.ensure(out.parent)
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        tmp = Path(profile) / "shot.png"
        done = subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
                               f"--virtual-time-budget={settle_ms}", f"--screenshot={tmp}", url],
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        if not tmp.is_file():
            raise WorkFailed(f"Chromium wrote no screenshot (exit {done.returncode}): {done.stderr[-500:]}")
        return paths.atomic_write_bytes(out, tmp.read_bytes())


QUESTION = "How many tokens do 16 blocks of vLLM's CPU KV cache hold?"
PASSAGES = [("block-size", "On vLLM's CPU backend a KV cache block holds 128 tokens; on a GPU, 16."),
            ("kv-cache", "The KV cache stores the keys and values of every past token, in every layer."),
            ("batching", "Continuous batching admits new requests between decode steps.")]  # fmt: skip


def retrieve(question: str, passages: list[tuple[str, str]], k: int = 2) -> list[tuple[str, float, str]]:
    """The k passages most similar to the question by MiniLM cosine: (id, score, text)."""
    from shared.models import load_embedder

    embedder = load_embedder()
    vectors = embedder.encode([question] + [text for _, text in passages], normalize_embeddings=True)
    scores = vectors[1:] @ vectors[0]
    best = scores.argsort()[::-1][:k]
    return [(passages[i][0], float(scores[i]), passages[i][1]) for i in best]


def rag_prompt(question: str, contexts: list[str]) -> list[dict[str, str]]:
    joined = "\n\n".join(contexts)
    return [{"role": "user", "content": f"Answer from the context in one or two sentences.\n\nContext:\n{joined}\n\n"
             f"Question: {question}"}]  # fmt: skip


def traced_rag_request(tracing: Any, model: Any, question: str = QUESTION,
                       passages: list[tuple[str, str]] = PASSAGES) -> str:  # fmt: skip
    """One real request through a fixed pipeline, traced: retrieve the passages closest to the
    question (MiniLM), answer from them with the model, then check the arithmetic the question asks
    for with the calculator tool (a fixed step here; in stage 2's loop the model chooses its tools)."""
    from stage2_prompting_tools.tools import calculator

    with tracing.span("rag", "CHAIN", **{"input.value": question}) as span:
        found = tracing.retrieval(question, lambda q: retrieve(q, passages))
        response = tracing.chat(
            model, rag_prompt(question, [text for _, _, text in found]), route="rag", max_tokens=48
        )
        total = tracing.tool("calculator", calculator, {"expression": "16 * 128"})
        answer = f"{response.text} (calculator: 16 * 128 = {total})"
        span.set_attribute("output.value", answer)
        return answer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stage5_serving_ops.phoenix", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    shot = sub.add_parser(
        "screenshot", help="start Phoenix, trace one real RAG request, screenshot its trace"
    )
    shot.add_argument("--out", default=str(paths.reports_dir() / "phoenix_trace.png"))
    args = parser.parse_args(argv)
    if args.command == "screenshot":
        from shared.chat import LocalChatModel
        from stage5_serving_ops.tracing import Tracing

        with PhoenixServer() as phoenix:
            tracing = Tracing(path=phoenix.working_dir / "traces.jsonl", otlp_endpoint=phoenix.otlp_endpoint)
            traced_rag_request(tracing, LocalChatModel())
            tracing.shutdown()
            spans = phoenix.spans(tracing.service, at_least=4)
            if not spans:
                raise WorkFailed("Phoenix received no spans")
            trace_id = spans[0]["context"]["trace_id"]
            project = phoenix.project_id(tracing.service)
            path = screenshot(f"{phoenix.url}/projects/{project}/traces/{trace_id}", Path(args.out))
        console.print(f"wrote {path} ({len(spans)} spans of trace {trace_id[:12]})")
        return 0
    raise BadInput(f"unknown command {args.command}")


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
