"""A deterministic, resumable, data-parallel sampler of prompt batches.

Each epoch e visits the dataset in one order: a permutation drawn from random.Random("<seed>:<e>") (the
identity when shuffle=False). The order is cut into GLOBAL batches of `global_batch_size` records; data-
parallel rank r takes the r-th contiguous slice of size global_batch_size / world_size of every global
batch. So the global sequence of batches depends only on (dataset size, seed, global batch size): the ranks'
slices of one epoch are disjoint and together cover it, and a run may resume with a different world size.

drop_last=True (default): an epoch is floor(N / G) global batches, the rest of the order is not visited in
that epoch (the next epoch's permutation differs). drop_last=False: ceil(N / G) batches, the last one filled
up by wrapping to the start of the same epoch's order (every batch is full, a few records repeat).

State = (epoch, position): position is the number of global batches already taken in the epoch.
state_dict() / load_state_dict() save and restore it (checkpoint resume).
"""

from __future__ import annotations

import random
from typing import Any, Iterator, Sequence

STATE_VERSION = 1


class PromptSampler:
    """Batches of prompt records for one data-parallel rank (module docstring).

    next_batch() returns shallow copies of the records of this rank's slice of the next global batch.
    """

    def __init__(
        self,
        dataset: Sequence[dict],
        global_batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ):
        if global_batch_size < 1:
            raise ValueError(f"global_batch_size must be >= 1, got {global_batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if global_batch_size % world_size:
            raise ValueError(
                f"global_batch_size={global_batch_size} is not divisible by the data-parallel size {world_size}"
            )
        if len(dataset) == 0:
            raise ValueError("the dataset is empty")
        if drop_last and len(dataset) < global_batch_size:
            raise ValueError(
                f"the dataset has {len(dataset)} records, fewer than one global batch of {global_batch_size} "
                "(use a smaller batch or drop_last=False)"
            )
        self.dataset = dataset
        self.num_records = len(dataset)
        self.global_batch_size = global_batch_size
        self.local_batch_size = global_batch_size // world_size
        self.seed = int(seed)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.position = 0
        self._order_epoch: int | None = None
        self._order: list[int] = []

    # ---------------------------------------------------------------- ordering
    @property
    def batches_per_epoch(self) -> int:
        n, g = self.num_records, self.global_batch_size
        return n // g if self.drop_last else -(-n // g)

    def epoch_order(self, epoch: int) -> list[int]:
        """The visiting order of all record indices in `epoch`."""
        if self._order_epoch != epoch:
            order = list(range(self.num_records))
            if self.shuffle:
                random.Random(f"{self.seed}:{epoch}").shuffle(order)
            self._order, self._order_epoch = order, epoch
        return self._order

    def global_batch_indices(self, epoch: int, step: int) -> list[int]:
        """Record indices of global batch `step` (0-based within the epoch) of `epoch`, all ranks."""
        if not 0 <= step < self.batches_per_epoch:
            raise IndexError(f"step {step} outside the epoch's {self.batches_per_epoch} batches")
        order = self.epoch_order(epoch)
        start = step * self.global_batch_size
        return [order[(start + i) % self.num_records] for i in range(self.global_batch_size)]

    def local_batch_indices(self, epoch: int, step: int) -> list[int]:
        """This rank's slice of global batch `step` of `epoch`."""
        start = self.rank * self.local_batch_size
        return self.global_batch_indices(epoch, step)[start:start + self.local_batch_size]

    # ---------------------------------------------------------------- iteration
    def next_indices(self) -> list[int]:
        """This rank's indices of the next batch, advancing (epoch, position)."""
        if self.position >= self.batches_per_epoch:
            self.epoch += 1
            self.position = 0
        indices = self.local_batch_indices(self.epoch, self.position)
        self.position += 1
        return indices

    def next_batch(self) -> list[dict]:
        """This rank's records of the next batch (shallow copies), advancing the state."""
        return [dict(self.dataset[i]) for i in self.next_indices()]

    def __iter__(self) -> Iterator[list[dict]]:
        """Batches forever (epochs follow one another); bound it with the number of training steps."""
        while True:
            yield self.next_batch()

    @property
    def batches_taken(self) -> int:
        """Global batches taken since the start (all epochs)."""
        return self.epoch * self.batches_per_epoch + self.position

    # ---------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "num_records": self.num_records,
            "global_batch_size": self.global_batch_size,
            "shuffle": self.shuffle,
            "drop_last": self.drop_last,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a saved state. The dataset size, seed, global batch size, shuffle and drop_last must be
        those of the saved run (the world size may differ); a mismatch raises ValueError naming it."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"sampler state version {state.get('version')!r} is not {STATE_VERSION}")
        mine = self.state_dict()
        for key in ("num_records", "seed", "global_batch_size", "shuffle", "drop_last"):
            if state.get(key) != mine[key]:
                raise ValueError(
                    f"cannot resume the prompt sampler: saved {key}={state.get(key)!r} but this run has "
                    f"{key}={mine[key]!r} (the dataset or data config changed since the checkpoint)"
                )
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position <= self.batches_per_epoch:
            raise ValueError(f"invalid sampler state: epoch={epoch}, position={position}")
        self.epoch, self.position = epoch, position
