"""No process of a command outlives the command's main process.

`spawn_local` starts one process per rank. Three things keep the whole tree tied to the main
process, because each covers what the others cannot:

1. Every rank asks Linux to SIGKILL it when the main process dies (PR_SET_PDEATHSIG).
2. Every rank leads its own process group (`os.setpgid(0, 0)` first thing), which everything it
   starts inherits. PDEATHSIG is not inherited: megatron-core's checkpoint writer keeps a
   persistent `multiprocessing.Manager` server per rank (spawned, it sleeps in accept() forever)
   and forks its write workers; after a SIGKILL of `policy-split run` such a Manager (276 MB, and
   SIGTERM blocked because it was started while the trainer held signals for a save) was seen
   alive half an hour later, and the two of a timed-out `convert` over an hour later.
3. A watchdog process, started by the main process in its own session, holds the read end of a
   pipe whose write end only the main process has. When the main process ends in any way
   (SIGKILL and OOM included) the pipe reaches EOF and the watchdog SIGKILLs every rank's group.

When the main process is alive, `spawn_local` itself ends the groups once the ranks are done (or
failed). Linux only: elsewhere these are no-ops and killing the main process leaves orphans.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

PR_SET_PDEATHSIG = 1

# Runs in a fresh interpreter: no imports of ours, nothing but the standard library.
_WATCHDOG = """
import os, signal, sys
for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(s, signal.SIG_IGN)
groups = set()
for line in sys.stdin:
    verb, _, pgid = line.partition(" ")
    if verb == "watch":
        groups.add(int(pgid))
    elif verb == "forget":
        groups.discard(int(pgid))
for pgid in groups:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass
"""


def _linux() -> bool:
    return sys.platform.startswith("linux")


def die_with_parent(parent_pid: int, sig: int = signal.SIGKILL) -> None:
    """Ask Linux to send `sig` to this process when its parent exits (prctl PR_SET_PDEATHSIG), and
    exit now if the parent is already gone. No-op off Linux."""
    if not _linux():
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        return  # best effort: the watchdog still ends this process's group
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def lead_own_group() -> None:
    """Make this process the leader of a new process group, so that everything it starts can be
    ended together with it (`kill_group`). Called first thing in a spawned rank."""
    if _linux():
        os.setpgid(0, 0)


def kill_group(pgid: int) -> None:
    """SIGKILL every process of group `pgid` (the rank and whatever it started); gone is fine."""
    if not _linux():
        return
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass


class Watchdog:
    """The process that ends the ranks' groups if the main process dies without doing so (point 3
    of the module docstring). `watch(pid)` after starting a rank; `close()` once the groups are
    ended (the watchdog then exits without killing)."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        if _linux():
            # Own session: a Ctrl-C or hang-up at the terminal does not reach it.
            self._proc = subprocess.Popen([sys.executable, "-c", _WATCHDOG], stdin=subprocess.PIPE,
                                          stdout=subprocess.DEVNULL, start_new_session=True, text=True)

    def _send(self, line: str) -> None:
        if self._proc is None or self._proc.stdin is None:
            return
        try:
            self._proc.stdin.write(line + "\n")
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def watch(self, pgid: int) -> None:
        self._send(f"watch {pgid}")

    def forget(self, pgid: int) -> None:
        self._send(f"forget {pgid}")

    def close(self) -> None:
        if self._proc is None:
            return
        try:
            self._proc.stdin.close()
        except OSError:
            pass
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
        self._proc = None


def describe_exit(exitcode: int | None) -> str:
    """A rank's exit code in words: "exit status 3", "signal SIGKILL (out of memory? see dmesg)"."""
    if exitcode is None:
        return "still running"
    if exitcode >= 0:
        return f"exit status {exitcode}"
    try:
        name = signal.Signals(-exitcode).name
    except ValueError:
        name = f"signal {-exitcode}"
    hint = " (killed from outside: out of memory? see `dmesg`)" if name == "SIGKILL" else ""
    return f"{name}{hint}"
