"""Helpers of the GPU test group: run a scenario in a fresh process on the GPU, and ask whether an
FP8 recipe can run here.

Each scenario runs in its own spawned interpreter with a one-rank NCCL world and megatron-core's
parallel state (TP = PP = 1): megatron-core's global state and vLLM's process-wide changes never
leak between tests, and a CUDA error in one scenario cannot poison the next.
"""

from __future__ import annotations

import os
import pickle
import traceback


def _worker(fn, args, queue, port):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    from policy_split_megatron.distributed import ParallelLayout, destroy_distributed, init_distributed

    try:
        init_distributed(ParallelLayout(), rank=0, world_size=1, backend="nccl")
        queue.put((True, pickle.dumps(fn(*args))))
    except BaseException:  # noqa: BLE001 - the traceback is the test's failure message
        queue.put((False, traceback.format_exc()))
    finally:
        try:
            destroy_distributed()
        except Exception:  # noqa: BLE001
            pass


def run_on_gpu(fn, *args, timeout: float = 900):
    """fn(*args) in a fresh process with a one-rank NCCL world; its (picklable) result, or an
    AssertionError carrying the scenario's traceback."""
    import torch.multiprocessing as mp

    from policy_split_megatron.distributed import free_port

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_worker, args=(fn, args, queue, free_port()))
    proc.start()
    try:
        ok, payload = queue.get(timeout=timeout)
    finally:
        proc.join(timeout=60)
        if proc.is_alive():
            proc.kill()
    if not ok:
        raise AssertionError(f"GPU scenario {fn.__name__} failed:\n{payload}")
    return pickle.loads(payload)


def fp8_unsupported_reason(recipe: str, fp8: str = "hybrid") -> str | None:
    """None when this machine can run `recipe`, else the hardware check's message."""
    from policy_split_megatron.model.precision import (
        PrecisionConfig,
        UnsupportedPrecisionError,
        check_hardware_support,
    )

    try:
        check_hardware_support(PrecisionConfig(fp8=fp8, fp8_recipe=recipe))
    except UnsupportedPrecisionError as err:
        return str(err)
    return None
