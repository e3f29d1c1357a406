"""A server must die with whoever started it: a watchdog between the course's command and vLLM.

vLLM runs in a process group of its own (so that one signal reaches the API server and the engine
processes it spawns). That is what lets `stop()` end all of them at once, and it is also what keeps a
terminal's Ctrl-C from reaching them: the group is not the terminal's. So when the command that
started vLLM goes away without running its clean-up (killed with SIGKILL, a CI job's timeout, a
closed terminal, a crash), nothing else would stop the server: it would keep answering on its port
and hold its KV cache (gigabytes) until someone finds it. An orphaned server is the usual leak of
any tool that starts one.

The cure is to make the server's life depend on its parent's, in two ways:

- **a parent-death signal**: Linux's `prctl(PR_SET_PDEATHSIG, sig)` asks the kernel to send `sig`
  to this process when its parent dies, however it dies, SIGKILL included. It is set by the child on
  itself, after the fork, and then `getppid()` is checked once: a parent that died before the call
  is already gone and sends nothing. (The signal follows the *thread* that forked the child; a
  library that starts a server from a worker thread would see it fire when that thread ends, so
  the handler checks that the parent really is gone before acting.)
- **a watchdog**: this small process, started in place of vLLM, is the leader of a group of its own,
  starts vLLM inside it (with a parent-death signal of its own, so vLLM also dies with the
  watchdog), and then waits. When its parent dies (the signal, or a changed `getppid()` seen by
  its once-a-second poll, for any signal that was lost) or when it is told to stop (SIGTERM,
  SIGINT, SIGHUP), it sends SIGTERM to vLLM, gives it `--grace` seconds to shut down cleanly
  (vLLM stops its own engine processes), then SIGKILLs whatever is left of the group. It exits with vLLM's exit code, so the
  caller sees "vLLM exited with code 1" when vLLM fails on its own.

Only the standard library is imported here: the watchdog starts in a few tens of milliseconds.

    python -m stage5_serving_ops.watchdog --parent PID [--grace S] -- COMMAND ...
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
POLL_S = 0.2  # how often the loop looks at its child and its parent

_libc = None


def set_parent_death_signal(sig: int) -> bool:
    """Ask the kernel to send `sig` to this process when its parent dies; False where there is no prctl."""
    global _libc
    if not sys.platform.startswith("linux"):
        return False
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0


def process_group_members(pgid: int) -> list[int]:
    """The live processes of group `pgid` (zombies, already dead and awaiting their parent, do not count)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # the name in (...) may hold spaces
        except (OSError, IndexError):
            continue
        state, group = fields[0], int(fields[2])
        if group == pgid and state not in ("Z", "X"):
            members.append(int(stat.parent.name))
    return members


class Watchdog:
    def __init__(self, parent: int, command: Sequence[str], grace_s: float):
        self.parent, self.command, self.grace_s = parent, list(command), grace_s
        self.stop_reason: str | None = None
        self.child: subprocess.Popen[bytes] | None = None

    def on_signal(self, signum: int, _frame: object) -> None:
        if signum == signal.SIGUSR1:  # the parent-death signal: act only if the parent is really gone
            if os.getppid() != self.parent:
                self.stop_reason = "its parent died"
        else:
            self.stop_reason = f"it received {signal.Signals(signum).name}"

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
            signal.signal(sig, self.on_signal)
        if os.getpgrp() != os.getpid():
            # Lead a group of our own, always: the sweep below kills every other member of our group,
            # which must never include the caller (a watchdog started in the caller's group would).
            os.setpgid(0, 0)
        set_parent_death_signal(signal.SIGUSR1)
        if os.getppid() != self.parent:  # the parent died before the line above: nobody would tell us
            return 1
        # vLLM stays in our group (it is the group the caller signals) and dies if we do.
        self.child = subprocess.Popen(
            self.command, preexec_fn=lambda: set_parent_death_signal(signal.SIGTERM)
        )
        while self.stop_reason is None:
            if self.child.poll() is not None:
                self.sweep()
                return self.child.returncode
            if os.getppid() != self.parent:
                self.stop_reason = "its parent died"
                break
            time.sleep(POLL_S)
        return self.shutdown()

    def shutdown(self) -> int:
        """SIGTERM to vLLM (which stops its own engine processes), `grace_s` for a clean exit, then
        SIGKILL for anything left in the group."""
        assert self.child is not None
        print(
            f"[watchdog] stopping the server: {self.stop_reason}", file=sys.stderr, flush=True
        )  # to its log
        if self.child.poll() is None:
            self.child.send_signal(signal.SIGTERM)
            try:
                self.child.wait(timeout=self.grace_s)
            except subprocess.TimeoutExpired:
                pass
        self.sweep()
        return 0 if self.child.returncode is None else self.child.returncode

    def sweep(self) -> None:
        """SIGKILL every other process still in the group (an engine process vLLM left behind)."""
        me = os.getpid()
        for pid in process_group_members(os.getpgrp()):
            if pid != me:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self.child is not None and self.child.poll() is None:
            self.child.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stage5_serving_ops.watchdog", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--parent", type=int, required=True, help="the process whose death stops the command")
    parser.add_argument("--grace", type=float, default=20.0, help="seconds between SIGTERM and SIGKILL")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command to run (put it after --)")
    return Watchdog(args.parent, command, args.grace).run()


if __name__ == "__main__":
    sys.exit(main())
