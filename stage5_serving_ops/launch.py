"""Starting a server from a command, and stopping it however the command ends.

server.py knows how to run vLLM; this module is what every command that needs a server does with it
(`serve`, `bench`, `eval`, `demo`): build a `ServerConfig` from the command's options, start the
server with a progress line, and make sure it stops. A command can end four ways:

    it returns or raises       the `finally` of `running_server` stops the server
    Ctrl-C (SIGINT)            Python raises KeyboardInterrupt: the same `finally`
    SIGTERM, SIGHUP            by default these end Python at once, running no `finally`; a
                               supervisor, `kill`, a CI timeout send SIGTERM, a closed terminal
                               SIGHUP. `stop_on_signals` turns them into an exception too, so the
                               clean-up runs exactly as for Ctrl-C
    SIGKILL, a crash           nothing in this process runs; the watchdog (watchdog.py) sees its
                               parent die and stops the server itself

    with running_server(server_config(args)) as server:
        ... server.base_url ...
"""

from __future__ import annotations

import argparse
import signal
from collections.abc import Iterator
from contextlib import contextmanager

from shared.console import console, progress
from stage5_serving_ops.server import ServerConfig, VLLMServer

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Stopped(KeyboardInterrupt):
    """The command was told to stop by a signal; a KeyboardInterrupt, so everything that cleans up
    after Ctrl-C cleans up after it as well."""

    def __init__(self, signum: int):
        self.signal_name = signal.Signals(signum).name
        super().__init__(self.signal_name)


def _raise_stopped(signum: int, _frame: object) -> None:
    raise Stopped(signum)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP raise `Stopped` inside the block (and only there: the old handlers come back)."""
    previous = {sig: signal.signal(sig, _raise_stopped) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def server_config(
    args: argparse.Namespace, port: int | None = None, model: str | None = None
) -> ServerConfig:
    """A ServerConfig from a command's options (`--model`, `--kv-cache-gib`, `--engine`, and `serve`'s own)."""
    return ServerConfig(model=model or args.model, host=getattr(args, "host", "127.0.0.1"),
                        port=getattr(args, "port", 0) if port is None else port,
                        api_key=getattr(args, "api_key", None), lora=getattr(args, "lora", None),
                        kv_cache_gib=args.kv_cache_gib, served_name=getattr(args, "served_name", None) or "",
                        engine=getattr(args, "engine", "vllm"), prefix_caching=getattr(args, "prefix_caching", True),
                        speculative_tokens=getattr(args, "speculative_tokens", 0),
                        dtype=getattr(args, "dtype", "") or "")  # fmt: skip


def start_server(config: ServerConfig) -> VLLMServer:
    """Start vLLM with a progress line; say where it is and how long it took."""
    server = VLLMServer(config)
    with progress(transient=True) as bar:
        name = config.engine_name
        task = bar.add_task(f"starting {name} with {config.model} (log: {config.log_file})", total=None)
        server.start(
            on_wait=lambda elapsed: bar.update(task, description=f"starting {name} ({elapsed:.0f} s)")
        )
    console.print(
        f"{name} ready in {server.started_s:.0f} s at {server.base_url} (model {config.served_name!r})"
    )
    return server


@contextmanager
def running_server(config: ServerConfig) -> Iterator[VLLMServer]:
    """A started server for the block, stopped when the block ends: normally, on an error, on
    Ctrl-C, SIGTERM or SIGHUP."""
    with stop_on_signals():
        server = start_server(config)  # a failed start stops what it started
        try:
            yield server
        finally:
            server.stop()


def add_server_options(p: argparse.ArgumentParser) -> None:
    from shared.models import DEFAULT_CHAT_MODEL

    p.add_argument("--model", default=DEFAULT_CHAT_MODEL, help="registry name, hub id or model folder")
    p.add_argument(
        "--kv-cache-gib", type=int, default=2, help="KV cache size on a CPU (VLLM_CPU_KVCACHE_SPACE)"
    )
