"""Megatron -> rollout engine weight sync: the bridge's HF tensors, streamed in byte-bounded buckets.

Names and layouts come only from `bridge.export_hf_weights` (the same table as checkpoint export):
it all-gathers each parameter's TP shards and broadcasts PP stages, yielding full HF tensors on
every rank. This module adds two things on top:

* the export plan (`bridge.export_plan`, a collective over the PP group) is computed on the first
  sync and cached: it depends only on the model's structure;
* tensors are grouped into buckets of at most `bucket_bytes` (a larger tensor is a bucket of its
  own) and handed to the engine bucket by bucket, releasing each tensor as the engine takes it,
  so the extra memory held by the sync is about one bucket (plus the tensor being gathered), not
  the model.

Before exporting, Transformer Engine's cached FP8 copies of the weights (`_fp8_workspaces` of
every TE module, FP8 models only) are dropped (`clear_fp8_caches`): they belong to the training
step that just ended, hold device memory the engine is about to need, and would otherwise anchor
large allocator segments across the train -> sync -> generate cycle (NeMo-RL's
`force_clear_fp8_caches`). The next training forward re-creates them from the current weights.
Models without TE modules (every CPU model) have none: the sync is unchanged.

The engine receives ONE iterator per sync, not one call per bucket: vLLM's in-place reload
(`reload_weights`) processes a fused layer (qkv_proj, gate_up_proj) when all of its tensors have
arrived within a call, and a layer whose tensors are split over two calls is rebuilt from partial
data (measured: NaN log-probs when the q/k/v biases come in a second call). Streaming every bucket
through one call keeps the bucket bound without that hazard.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator

import torch

from policy_split_megatron.bridge import export_hf_weights, export_plan
from policy_split_megatron.bridge.convert import model_chunks
from policy_split_megatron.model.architecture import ModelArchitecture
from policy_split_megatron.rollout.types import SyncMetrics

NamedTensor = tuple[str, torch.Tensor]


def tensor_bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def iter_buckets(named: Iterable[NamedTensor], bucket_bytes: int) -> Iterator[list[NamedTensor]]:
    """Group (name, tensor) pairs, in order, into lists of at most `bucket_bytes` bytes; a tensor
    larger than the bound forms a bucket on its own. Never yields an empty bucket."""
    if bucket_bytes < 1:
        raise ValueError(f"bucket_bytes must be >= 1, got {bucket_bytes}")
    bucket: list[NamedTensor] = []
    size = 0
    for name, tensor in named:
        nbytes = tensor_bytes(tensor)
        if bucket and size + nbytes > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, tensor))
        size += nbytes
    if bucket:
        yield bucket


def clear_fp8_caches(model: torch.nn.Module) -> int:
    """Drop Transformer Engine's per-module FP8 weight workspaces (`module._fp8_workspaces`);
    return how many cached tensors were dropped (0 for models without TE FP8 modules). On CUDA,
    the freed blocks are handed back to the driver when anything was dropped."""
    dropped = 0
    for module in (m for chunk in model_chunks(model) for m in chunk.modules()):
        workspaces = getattr(module, "_fp8_workspaces", None)
        if isinstance(workspaces, dict) and workspaces:
            dropped += len(workspaces)
            workspaces.clear()
    if dropped and torch.cuda.is_available():
        torch.cuda.empty_cache()
    return dropped


class _TimedIterator:
    """Wraps an iterator and accumulates the wall time spent inside next() (the export's share)."""

    def __init__(self, it: Iterator[NamedTensor]):
        self._it, self.seconds = it, 0.0

    def __iter__(self):
        return self

    def __next__(self) -> NamedTensor:
        start = time.perf_counter()
        try:
            return next(self._it)
        finally:
            self.seconds += time.perf_counter() - start


class WeightSync:
    """Streams a Megatron policy's weights into an engine loader; caches the export plan.

    Collective: every rank of the model-parallel group must call `sync` together and its loader
    must consume the stream (if a loader stops early or raises, the rest of the export is drained
    so the other ranks' collectives still complete, then the error propagates)."""

    def __init__(self, bucket_bytes: int, *, clear_fp8_caches: bool = True):
        if bucket_bytes < 1:
            raise ValueError(f"bucket_bytes must be >= 1, got {bucket_bytes}")
        self.bucket_bytes = bucket_bytes
        self.clear_fp8_caches = clear_fp8_caches
        self.fp8_workspaces_cleared = 0  # dropped by the last sync (FP8 models only)
        self._plan: list | None = None
        self._plan_key: tuple | None = None

    def plan(self, model: torch.nn.Module, arch: ModelArchitecture) -> tuple[list, bool]:
        """(export plan, whether it came from the cache). Collective over the PP group on a miss."""
        key = (tuple(map(id, model_chunks(model))), arch)
        if self._plan is not None and self._plan_key == key:
            return self._plan, True
        self._plan, self._plan_key = export_plan(model, arch), key
        return self._plan, False

    def sync(
        self,
        model: torch.nn.Module,
        arch: ModelArchitecture,
        load: Callable[[Iterator[NamedTensor]], object],
    ) -> SyncMetrics:
        """Export the model and call `load(iterator)` once with every HF tensor, bucket by bucket."""
        start = time.perf_counter()
        self.fp8_workspaces_cleared = clear_fp8_caches(model) if self.clear_fp8_caches else 0
        plan, cached = self.plan(model, arch)
        metrics = SyncMetrics(plan_cached=cached)
        exported = _TimedIterator(export_hf_weights(model, arch, plan))

        handed = 0

        def stream() -> Iterator[NamedTensor]:
            nonlocal handed
            for bucket in iter_buckets(exported, self.bucket_bytes):
                nbytes = sum(tensor_bytes(t) for _, t in bucket)
                metrics.buckets += 1
                metrics.tensors += len(bucket)
                metrics.bytes += nbytes
                metrics.max_bucket_bytes = max(metrics.max_bucket_bytes, nbytes)
                bucket.reverse()
                while bucket:  # hand tensors over one by one, dropping our reference to each
                    handed += 1
                    yield bucket.pop()

        try:
            load(stream())
        except BaseException:
            _drain(exported)  # keep the other ranks' collectives in step, then report the error
            raise
        left = _drain(exported) + (metrics.tensors - handed)
        if left:
            raise RuntimeError(
                f"the engine's weight loader stopped after {handed} tensors with {left} left: "
                "the engine holds a mix of old and new weights"
            )
        metrics.seconds = time.perf_counter() - start
        metrics.export_seconds = exported.seconds
        return metrics


def _drain(it: Iterator) -> int:
    count = 0
    for _ in it:
        count += 1
    return count
