"""No server outlives what started it: `serve` killed with SIGINT, SIGTERM, SIGHUP and SIGKILL leaves
its port free and no process of the server's group alive; the same for a library caller killed
outright, and for the real vLLM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from stage5_serving_ops.server import free_port
from stage5_serving_ops.watchdog import process_group_members

# `serve` with the stand-in API server of fake_vllm.py in place of vLLM's (everything else is real)
REPO = Path(__file__).resolve().parents[2]
STAND_IN = ("import sys, stage5_serving_ops.server as s; s.VLLM_MODULE = 'tests.stage5.fake_vllm'; "
            "from stage5_serving_ops.cli import entry; sys.exit(entry())")  # fmt: skip


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_until(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


def start_serve(tmp_path: Path, stand_in: bool, timeout: float) -> tuple[subprocess.Popen, int, int]:
    """`serve` on a free port; (its process, the port, the server's process group) once it is ready."""
    port = free_port()
    head = [sys.executable, "-c", STAND_IN] if stand_in else [sys.executable, "-m", "stage5_serving_ops"]
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 (kept open for the child's lifetime)
    # the repository root last on the path, so the stand-in (tests.stage5.fake_vllm) is found from an
    # exercise workspace too, whose own packages come first
    path = [p for p in (os.environ.get("PYTHONPATH", ""), str(REPO)) if p]
    env = {**os.environ, "LLM_ROADMAP_ARTIFACTS": str(tmp_path), "PYTHONPATH": os.pathsep.join(path)}
    # SIGINT at its default, as for a command typed at a terminal: a shell starts a background job (a CI
    # step, say) with SIGINT ignored, and a Ctrl-C test would then test nothing but the ignoring
    cli = subprocess.Popen([*head, "serve", "--port", str(port)], stdout=subprocess.PIPE, stderr=log, env=env,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    ready = threading.Event()
    threading.Thread(target=lambda: cli.stdout.readline() and ready.set(), daemon=True).start()
    assert ready.wait(timeout), f"serve never printed its URL: {(tmp_path / 'serve.log').read_text()[-800:]}"
    (pgid,) = children(cli.pid)  # the watchdog, leader of the server's group
    assert len(process_group_members(pgid)) >= 3, "watchdog, API server and engine"
    assert port_open(port)
    return cli, port, pgid


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGKILL])
def test_serve_stops_its_server_however_it_is_stopped(tmp_path, sig):
    cli, port, pgid = start_serve(tmp_path, stand_in=True, timeout=120)
    cli.send_signal(sig)
    code = cli.wait(timeout=60)
    if sig == signal.SIGKILL:
        assert code == -signal.SIGKILL
    else:
        assert code == 0, "a requested stop is a clean exit"
        assert signal.Signals(sig).name in (tmp_path / "serve.log").read_text() or sig == signal.SIGINT
    assert wait_until(lambda: not process_group_members(pgid), 30), process_group_members(pgid)
    assert not port_open(port)


def test_a_caller_killed_outright_takes_its_command_along(tmp_path):
    """A library caller (not the CLI) that starts a watched command and is SIGKILLed: the watchdog
    stops the command and sweeps the grandchild that ignores SIGTERM."""
    engine = "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(3600)"
    command = [sys.executable, "-c", f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {engine!r}]); "
               "time.sleep(3600)"]  # fmt: skip
    caller = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                               "from stage5_serving_ops.server import watched; "
                               f"p = subprocess.Popen(watched({command!r}, 2.0), start_new_session=True); "
                               "print(p.pid, flush=True); time.sleep(3600)"], stdout=subprocess.PIPE)  # fmt: skip
    pgid = int(caller.stdout.readline())
    assert wait_until(lambda: len(process_group_members(pgid)) == 3, 20)
    caller.kill()
    caller.wait()
    assert wait_until(lambda: not process_group_members(pgid), 20), process_group_members(pgid)


@pytest.mark.server
def test_the_real_vllm_dies_with_a_killed_serve(tmp_path):
    cli, port, pgid = start_serve(tmp_path, stand_in=False, timeout=400)
    cli.kill()
    cli.wait()
    assert wait_until(lambda: not process_group_members(pgid), 60), process_group_members(pgid)
    assert not port_open(port)


def test_a_watchdog_started_in_its_callers_group_never_sweeps_the_caller():
    """The sweep kills every other process of the watchdog's group, so the watchdog always leads a
    group of its own; started in its caller's group, it would otherwise kill the caller."""
    caller = subprocess.run([sys.executable, "-c", "import subprocess, sys; from stage5_serving_ops.server import watched; "
                             "sys.exit(subprocess.call(watched([sys.executable, '-c', 'pass'], 2.0)) + 7)"],
                            timeout=60)  # fmt: skip
    assert caller.returncode == 7, "the caller lived to report its child's exit code"
