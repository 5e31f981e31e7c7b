"""Finding every process a command started, orphans included: the test puts a unique marker in the
command's environment, which every descendant inherits (forked or exec'd), and scans /proc for it."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

MARKER = "POLICY_SPLIT_TEST_PROCESS_MARK"


def marked_env(base: dict | None = None) -> tuple[dict, str]:
    """A copy of the environment with a fresh marker, and the marker."""
    mark = uuid.uuid4().hex
    env = dict(os.environ if base is None else base)
    env[MARKER] = mark
    return env, mark


def _state(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"


def marked_processes(mark: str) -> dict[int, str]:
    """pid -> command line of the live (not zombie) processes carrying `mark`."""
    needle = f"{MARKER}={mark}".encode()
    found = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            if needle not in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                continue
            if _state(pid) in ("Z", "X"):
                continue
            found[int(pid)] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
    return found


def wait_until_gone(mark: str, seconds: float) -> dict[int, str]:
    """Wait up to `seconds` for every marked process to end; return the survivors."""
    deadline = time.monotonic() + seconds
    while True:
        alive = marked_processes(mark)
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


def kill_all(mark: str) -> None:
    """Clean-up after a failed assertion: SIGKILL whatever still carries the marker."""
    import signal

    for pid in marked_processes(mark):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
