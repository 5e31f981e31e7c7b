"""Reward functions with known failure modes, importable by reward-pool workers (by dotted path)."""

from __future__ import annotations

import os
import time


def scripted_reward(record, response):
    """The response says what to do: "ok" (1.0), "wrong" (0.0), "hang" (sleep for an hour), "raise"
    (ValueError), "die" (the process exits at once, as in a segfault or an OOM kill)."""
    if response == "hang":
        time.sleep(3600)
    if response == "raise":
        raise ValueError(f"cannot read {record.get('answer')!r}")
    if response == "die":
        os._exit(13)
    return (1.0 if response == "ok" else 0.0), {"extracted": response}


def pid_reward(record, response):
    """Scores 1.0 and reports which process scored."""
    return 1.0, {"extracted": str(os.getpid())}


def prefix_reward(record, response):
    """1.0 when the response starts with "ok"; the extracted answer is the response's first word;
    the process that scored is reported as info["pid"]."""
    return (1.0 if response.startswith("ok") else 0.0), {"extracted": response.split()[0] if response else "",
                                                          "pid": os.getpid()}
