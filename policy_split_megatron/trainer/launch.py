"""Start `train` in every rank: directly under a launcher (torchrun or srun set WORLD_SIZE /
SLURM_NTASKS), or by spawning `nproc` local CPU processes joined by gloo."""

from __future__ import annotations

import os
from typing import Any

from policy_split_megatron.config import RunConfig


def _rank_main(rank: int, world_size: int, config: RunConfig) -> dict[str, Any]:
    from policy_split_megatron.trainer.run import train

    return train(config, show_progress=rank == 0)


def launch_training(config: RunConfig, nproc: int | None = None) -> dict[str, Any]:
    from policy_split_megatron.distributed import ParallelLayout, spawn_local

    layout = ParallelLayout(config.parallel.tensor_parallel, config.parallel.pipeline_parallel)
    if "WORLD_SIZE" in os.environ or "SLURM_NTASKS" in os.environ:
        from policy_split_megatron.trainer.run import train

        return train(config, show_progress=int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", 0))) == 0)
    nproc = nproc or layout.tensor_parallel * layout.pipeline_parallel
    layout.data_parallel(nproc)  # clear error before any process starts
    return spawn_local(_rank_main, nproc, layout, config, timeout=7 * 24 * 3600, quiet=True)[0]
