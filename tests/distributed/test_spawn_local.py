"""spawn_local's failures: a user error raised in a rank comes back as RankUserError (one line for
the CLI, the rank's traceback kept for --debug); a rank killed from outside (an OOM kill) ends the
call within seconds, naming the signal, instead of leaving it waiting for a result that never comes;
SIGTERM of the main process reaches the ranks, which may finish cleanly."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from policy_split_megatron.distributed import ParallelLayout, SpawnTerminated, spawn_local
from policy_split_megatron.errors import RankUserError


def _bad_row_on_rank_1(rank, world_size):
    from policy_split_megatron.data.datasets import DatasetError

    if rank == 1:
        raise DatasetError("/data/train.jsonl: line 7: missing field 'answer'")
    time.sleep(600)  # rank 0 would wait in a collective


def _killed_on_rank_1(rank, world_size):
    if rank == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(600)


def _stops_on_sigterm(rank, world_size):
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    open(f"/tmp/spawn_ready_{os.getppid()}_{rank}", "w").close()
    stopped.wait(120)
    return ("stopped" if stopped.is_set() else "timeout", rank)


def test_user_error_in_a_rank_comes_back_as_one():
    start = time.monotonic()
    with pytest.raises(RankUserError, match="^/data/train.jsonl: line 7: missing field 'answer'$") as caught:
        spawn_local(_bad_row_on_rank_1, 2, ParallelLayout())
    assert "Traceback" in caught.value.remote_traceback and "DatasetError" in caught.value.remote_traceback
    assert isinstance(caught.value, RuntimeError)  # callers that catch RuntimeError still do
    assert time.monotonic() - start < 120


def test_a_rank_killed_from_outside_ends_the_call():
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="rank 1 ended with SIGKILL .*out of memory"):
        spawn_local(_killed_on_rank_1, 2, ParallelLayout(), timeout=600)
    assert time.monotonic() - start < 120  # not the 600 s timeout


def test_sigterm_of_the_main_process_is_passed_to_the_ranks():
    me = os.getpid()
    ready = [f"/tmp/spawn_ready_{me}_{r}" for r in range(2)]

    def terminate_when_ready():
        deadline = time.monotonic() + 120
        while not all(os.path.exists(p) for p in ready) and time.monotonic() < deadline:
            time.sleep(0.1)
        os.kill(me, signal.SIGTERM)

    threading.Thread(target=terminate_when_ready, daemon=True).start()
    try:
        assert spawn_local(_stops_on_sigterm, 2, ParallelLayout()) == [("stopped", 0), ("stopped", 1)]
    finally:
        for p in ready:
            if os.path.exists(p):
                os.remove(p)


def test_ranks_that_ignore_sigterm_end_the_call_as_terminated(monkeypatch):
    import policy_split_megatron.distributed as distributed

    monkeypatch.setattr(distributed, "SIGNAL_GRACE_SECONDS", 2.0)
    me = os.getpid()
    threading.Timer(15.0, lambda: os.kill(me, signal.SIGTERM)).start()
    with pytest.raises(SpawnTerminated, match="stopped by SIGTERM"):
        spawn_local(_ignores_sigterm, 1, ParallelLayout())


def _ignores_sigterm(rank, world_size):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(600)
