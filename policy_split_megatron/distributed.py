"""Process-group set-up shared by the trainer, the tools and the tests.

One place initialises torch.distributed and megatron-core's parallel state, so that the backend
(gloo on CPU, NCCL on CUDA) and the tensor/pipeline layout are chosen the same way everywhere.
"""

from __future__ import annotations

import os
import pickle
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class ParallelLayout:
    """The parallel layout of the Megatron policy. world_size = tp * pp * dp."""

    tensor_parallel: int = 1
    pipeline_parallel: int = 1

    def data_parallel(self, world_size: int) -> int:
        model_parallel = self.tensor_parallel * self.pipeline_parallel
        if world_size % model_parallel:
            raise ValueError(
                f"world size {world_size} is not divisible by tensor_parallel x pipeline_parallel = "
                f"{self.tensor_parallel} x {self.pipeline_parallel}; launch a multiple of "
                f"{model_parallel} processes or change the layout"
            )
        return world_size // model_parallel


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def init_distributed(
    layout: ParallelLayout = ParallelLayout(),
    *,
    rank: int | None = None,
    world_size: int | None = None,
    backend: str | None = None,
) -> None:
    """Initialise torch.distributed (from torchrun/Slurm env vars unless given) and Megatron's
    model-parallel groups. Safe to call once per process."""
    from megatron.core import parallel_state

    if not dist.is_initialized():
        rank = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", 0))) if rank is None else rank
        world_size = (
            int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", 1)))
            if world_size is None
            else world_size
        )
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29500")
        backend = backend or default_backend()
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank % torch.cuda.device_count())))
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    layout.data_parallel(dist.get_world_size())  # validates divisibility with a clear message
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=layout.tensor_parallel,
            pipeline_model_parallel_size=layout.pipeline_parallel,
        )


def destroy_distributed() -> None:
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


def _spawned_worker(rank, world_size, port, layout, fn, args, queue, quiet):
    import traceback

    if quiet:
        from policy_split_megatron.console import quiet_third_party

        quiet_third_party()

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    try:
        init_distributed(layout, rank=rank, world_size=world_size, backend="gloo")
        # Plain pickle to bytes: torch's queue reductions would share tensors through file
        # descriptors that die with this process before the parent reads them.
        queue.put((rank, True, pickle.dumps(fn(rank, world_size, *args))))
    except BaseException:  # noqa: BLE001 - the traceback is the caller's error message
        queue.put((rank, False, traceback.format_exc()))
    finally:
        try:
            destroy_distributed()
        except Exception:  # noqa: BLE001
            pass


def spawn_local(
    fn, world_size: int, layout: ParallelLayout, *args, timeout: float = 600, quiet: bool = False
) -> list:
    """Run fn(rank, world_size, *args) in `world_size` fresh CPU processes joined by gloo, with
    Megatron's parallel state initialised to `layout`; return each rank's result (picklable), or
    raise RuntimeError carrying the first failing rank's traceback. Fresh interpreters keep
    Megatron's global parallel state from leaking between calls. `fn` must be importable
    (module-level). `quiet` silences third-party warnings in the workers (console commands)."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=_spawned_worker, args=(r, world_size, port, layout, fn, args, queue, quiet))
        for r in range(world_size)
    ]
    for p in procs:
        p.start()
    results: dict[int, object] = {}
    failure = None
    try:
        for _ in range(world_size):
            rank, ok, payload = queue.get(timeout=timeout)
            if not ok:
                failure = f"rank {rank} failed:\n{payload}"
                break  # the other ranks may be blocked in a collective: do not wait for them
            results[rank] = pickle.loads(payload)
    finally:
        for p in procs:
            p.join(timeout=5 if failure else timeout)
            if p.is_alive():
                p.kill()
    if failure:
        raise RuntimeError(failure)
    return [results[r] for r in range(world_size)]
