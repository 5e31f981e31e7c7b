"""Run a test body in N real processes joined by a gloo process group.

Every distributed test goes through `run_distributed`: it spawns fresh interpreters (so Megatron's
global parallel state never leaks between tests), initialises gloo and megatron-core's parallel
state, runs `fn(rank, world_size, *args)` and re-raises the first failure with its traceback.
Return values come back as a list indexed by rank.
"""

from __future__ import annotations

import os
import traceback

import torch.multiprocessing as mp

from policy_split_megatron.distributed import ParallelLayout, destroy_distributed, free_port, init_distributed


def _worker(rank, world_size, port, layout, fn, args, queue):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    import torch

    torch.set_num_threads(1)  # two processes on two cores: no oversubscription
    try:
        init_distributed(layout, rank=rank, world_size=world_size, backend="gloo")
        result = fn(rank, world_size, *args)
        queue.put((rank, True, result))
    except BaseException:  # noqa: BLE001 - the traceback is the test's failure message
        queue.put((rank, False, traceback.format_exc()))
    finally:
        try:
            destroy_distributed()
        except Exception:  # noqa: BLE001
            pass


def run_distributed(fn, world_size: int = 2, *args, tp: int = 1, pp: int = 1, timeout: float = 600):
    """Run fn(rank, world_size, *args) on `world_size` gloo ranks with Megatron TP=tp, PP=pp."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    layout = ParallelLayout(tensor_parallel=tp, pipeline_parallel=pp)
    procs = [
        ctx.Process(target=_worker, args=(r, world_size, port, layout, fn, args, queue))
        for r in range(world_size)
    ]
    for p in procs:
        p.start()
    results: dict[int, object] = {}
    failures = []
    try:
        for _ in range(world_size):
            rank, ok, payload = queue.get(timeout=timeout)
            if ok:
                results[rank] = payload
            else:
                failures.append(f"rank {rank} failed:\n{payload}")
                break  # the other ranks may be blocked in a collective: do not wait for them
    finally:
        for p in procs:
            p.join(timeout=5 if failures else timeout)
            if p.is_alive():
                p.kill()
    if failures:
        raise AssertionError("\n".join(failures))
    return [results[r] for r in range(world_size)]
