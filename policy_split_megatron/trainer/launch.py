"""Start `train` in every rank: directly under a launcher (torchrun sets WORLD_SIZE; `srun` starts a
job step with SLURM_NTASKS), or by spawning `nproc` local CPU processes joined by gloo.

Before any work, the launched world is checked against the parallel layout (`check_launch`): the
number of processes must be a multiple of TP x PP and, on CUDA, every process of a node needs its
own GPU. The error names the numbers and what to change, instead of a hang in a rendezvous or a
failure deep inside Megatron's group set-up.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

from policy_split_megatron.config import RunConfig


class LaunchError(ValueError):
    """The launched processes (or the Slurm allocation) do not fit the run's parallel layout."""


def _rank_main(rank: int, world_size: int, config: RunConfig) -> dict[str, Any]:
    from policy_split_megatron.trainer.run import train

    return train(config, show_progress=rank == 0)


def launched_world(environ: Mapping[str, str] = os.environ) -> tuple[int, str] | None:
    """(world size, where it comes from) when this process is one rank of a launched job: torchrun
    (WORLD_SIZE) or an srun step (SLURM_NTASKS). None when `policy-split` should spawn its ranks.
    A Slurm allocation outside any srun step (a batch script, an salloc shell) counts as launched
    only with one task; with more, nothing would start the other ranks: LaunchError."""
    from policy_split_megatron.distributed import in_slurm_step

    if "WORLD_SIZE" in environ:
        slurm = f", SLURM_NTASKS={environ['SLURM_NTASKS']}" if "SLURM_NTASKS" in environ else ""
        return int(environ["WORLD_SIZE"]), f"WORLD_SIZE={environ['WORLD_SIZE']}{slurm}"
    if "SLURM_NTASKS" not in environ:
        return None
    ntasks = int(environ["SLURM_NTASKS"])
    if in_slurm_step(environ) or ntasks == 1:
        return ntasks, f"SLURM_NTASKS={ntasks}"
    raise LaunchError(
        f"this process runs in a Slurm allocation of {ntasks} tasks (SLURM_NTASKS={ntasks}) but outside "
        "any srun step, so no other rank would ever join it: start one task per rank with "
        f"`srun policy-split train ...` (slurm/train_one_node.sbatch does), or ask for --ntasks=1 to "
        "run a single process here"
    )


def check_launch(tensor_parallel: int, pipeline_parallel: int, environ: Mapping[str, str] = os.environ,
                 *, cuda_devices: int | None = None) -> int | None:
    """Check the launched world against TP x PP before anything is built; return its size (None
    when not launched). `cuda_devices`: GPUs this process sees (None: ask torch; 0: CPU run)."""
    launched = launched_world(environ)
    if launched is None:
        return None
    world, source = launched
    model_parallel = tensor_parallel * pipeline_parallel
    if world % model_parallel:
        raise LaunchError(
            f"{world} processes were launched ({source}), but parallel.tensor_parallel x "
            f"parallel.pipeline_parallel = {tensor_parallel} x {pipeline_parallel} = {model_parallel} does not "
            f"divide {world}. Launch a multiple of {model_parallel} processes (Slurm: --nodes x "
            f"--ntasks-per-node, one task per GPU; torchrun: --nnodes x --nproc-per-node), or choose "
            f"parallel.tensor_parallel x parallel.pipeline_parallel dividing {world}."
        )
    if cuda_devices is None:
        import torch

        cuda_devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    from policy_split_megatron.distributed import tasks_on_this_node

    local = tasks_on_this_node(environ)
    allocated = environ.get("SLURM_GPUS_ON_NODE")
    if cuda_devices == 0:
        if allocated and allocated.isdigit() and int(allocated) > 0:
            print(f"policy-split: warning: Slurm allocated {allocated} GPU(s) on this node but torch sees no "
                  "CUDA device (a CPU build of torch?); running on CPU", file=sys.stderr)
        return world
    one_gpu_per_task = "SLURM_GPUS_PER_TASK" in environ  # srun binds a different GPU to every task
    if local and not one_gpu_per_task and cuda_devices < local:
        raise LaunchError(
            f"{local} processes were started on this node but it has {cuda_devices} visible GPU(s) "
            f"(CUDA_VISIBLE_DEVICES={environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}, Slurm GPUs on node: "
            f"{allocated or '<unset>'}); every process needs its own GPU. Start at most {cuda_devices} "
            f"per node (--ntasks-per-node={cuda_devices} with --gpus-per-node={cuda_devices}, or torchrun "
            f"--nproc-per-node={cuda_devices}) and use more nodes for a world of {world}."
        )
    return world


def launch_training(config: RunConfig, nproc: int | None = None) -> dict[str, Any]:
    from policy_split_megatron.distributed import spawn_local

    layout = config.parallel.layout()
    if check_launch(layout.tensor_parallel, layout.pipeline_parallel) is not None:
        from policy_split_megatron.trainer.run import train

        return train(config, show_progress=int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", 0))) == 0)
    nproc = nproc or layout.tensor_parallel * layout.pipeline_parallel
    layout.data_parallel(nproc)  # clear error before any process starts
    return spawn_local(_rank_main, nproc, layout, config, timeout=7 * 24 * 3600, quiet=True)[0]
