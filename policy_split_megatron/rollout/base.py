"""The rollout engine interface the trainer programs against.

One engine lives in each trainer process (colocated). The trainer's step uses it as:

    engine.start()                                  # once; collective over the world
    for step in ...:
        engine.wake_up(tags=["weights"])            # CUDA sleep mode: weights back first
        engine.sync_weights(model, arch)            # collective over the model-parallel group
        engine.wake_up(tags=["kv_cache"])
        result = engine.generate(my_prompts, step=step)
        engine.sleep()                              # hand memory back to Megatron
        ...train...
    engine.shutdown()                               # before torch.distributed is destroyed

`sleep`/`wake_up` are part of the interface on every device; on CPU they only track state.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import torch

from policy_split_megatron.model.architecture import ModelArchitecture
from policy_split_megatron.rollout.types import DualModePrompt, RolloutResult, SyncMetrics


class EngineStateError(RuntimeError):
    """An engine method was called in a state that cannot serve it (not started, asleep, shut down)."""


class RolloutEngine(abc.ABC):
    """Start, sync weights, generate both modes, sleep/wake, shut down."""

    @abc.abstractmethod
    def start(self) -> None:
        """Build the engine (collective over the trainer's world when one is initialised)."""

    @abc.abstractmethod
    def sync_weights(self, model: torch.nn.Module, arch: ModelArchitecture) -> SyncMetrics:
        """Load the Megatron policy's current weights (collective over its model-parallel group)."""

    @abc.abstractmethod
    def generate(self, prompts: Sequence[DualModePrompt], *, step: int = 0) -> RolloutResult:
        """n_normal + n_explore samples for each of this replica's prompts."""

    @abc.abstractmethod
    def sleep(self, level: int | None = None) -> None:
        """Release the engine's memory (weights and KV cache) while the trainer runs."""

    @abc.abstractmethod
    def wake_up(self, tags: Sequence[str] | None = None) -> None:
        """Re-acquire memory: tags among ("weights", "kv_cache"); None = everything."""

    @abc.abstractmethod
    def shutdown(self) -> None:
        """Free the engine; leaves the trainer's torch.distributed world intact. Idempotent."""

    def __enter__(self) -> "RolloutEngine":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
