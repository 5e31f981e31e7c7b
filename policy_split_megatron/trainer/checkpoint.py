"""Training checkpoints with megatron-core's distributed checkpointing, written atomically.

Layout of `<run>/checkpoints/`:

    step_000040/            one complete checkpoint (megatron-core torch_dist format)
      hf_metadata/          config.json, tokenizer and generation config of the model, when the
                            save was given `hf_metadata_dir`: the checkpoint describes itself, so
                            conversion and evaluation need nothing else
    step_000050.partial/    a save in progress, or one that was killed: never read
    latest                  text file naming the newest complete checkpoint

Every rank writes its shards into `step_N.partial/`; after a barrier rank 0 renames it to
`step_N/` and then replaces `latest` (write-to-temp + os.replace), so a run killed at any moment
leaves `latest` pointing at a complete checkpoint. The checkpoint holds the model and optimizer
shards (re-shardable by megatron-core), each rank's RNG states, and a small common state (step,
data-sampler position, the LR scheduler's state, anything the trainer adds). The optimizer is
megatron-core's (engine/optimizer_state.py: the distributed optimizer's fully reshardable format, so
a run saved at one TP/PP/DP layout resumes at another).

A checkpoint may hold the model alone (`save_checkpoint(..., optimizer=None, save_rng=False)`, what
`bridge/checkpoint_convert.hf_to_checkpoint` writes): the common state records what was saved, and
`load_checkpoint` then leaves the optimizer it is given fresh and the RNG streams untouched.

Shard files are written by the rank itself (`_write_shards`), not by the worker processes that
megatron-core 0.16.1 forks for them: its rank waited on a queue that only a worker that got far
enough filled, so a worker that died (psutil missing, an OOM kill) hung the run forever. Here a write
failure on any rank is raised on every rank as one CheckpointError, and a rank killed while writing
ends the run as any dead rank does.
"""

from __future__ import annotations

import os
import queue
import random
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing
from torch.distributed.checkpoint.api import CheckpointException
from megatron.core.dist_checkpointing.mapping import ShardedObject
from megatron.core.dist_checkpointing.strategies import filesystem_async
from megatron.core.dist_checkpointing.strategies.filesystem_async import FileSystemWriterAsync

from policy_split_megatron.bridge.convert import model_chunks
from policy_split_megatron.cpu_shims import megatron_on_cpu
from policy_split_megatron.engine.optimizer_state import load_optimizer_state, optimizer_sharded_state_dict

LATEST = "latest"
HF_METADATA_DIR = "hf_metadata"
"""Sub-folder of a checkpoint with the model's config.json, tokenizer and generation config."""
_CONTENTS = "checkpoint_contents"  # common-state key: which parts the checkpoint holds


class CheckpointError(RuntimeError):
    """A checkpoint directory is missing, partial, or does not match the model."""


def _step_dir(root: Path, step: int) -> Path:
    return root / f"step_{step:06d}"


def _rng_state() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _rank() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _model_state(model) -> dict:
    """The model's sharded state: one stage's, or {"chunk<i>": ...} of virtual pipeline chunks (the
    sharded tensors carry global layer numbers, so checkpoints load across pipeline layouts)."""
    chunks = model_chunks(model)
    if len(chunks) == 1:
        return chunks[0].sharded_state_dict()
    return {f"chunk{i}": chunk.sharded_state_dict() for i, chunk in enumerate(chunks)}


def _sharded_state(model, optimizer, with_rng: bool, *, is_loading: bool) -> dict:
    rank, world = _rank()
    model_state = _model_state(model)
    state = {"model": model_state}
    if optimizer is not None:
        state["optimizer"] = optimizer_sharded_state_dict(optimizer, model_state, is_loading=is_loading)
    if with_rng:
        # RNG streams differ per rank: one object per global rank. They are restored only when the
        # world size is unchanged; a re-sharded resume starts fresh streams.
        state["rng"] = ShardedObject("rng_state", _rng_state(), (world,), (rank,), replica_id=0)
    return state


def save_checkpoint(
    root: str | Path,
    step: int,
    model: torch.nn.Module,
    optimizer,
    common: dict[str, Any],
    keep_last: int | None = None,
    *,
    hf_metadata_dir: str | Path | None = None,
    save_rng: bool = True,
) -> Path:
    """Collective: write checkpoint `step` under `root` atomically and point `latest` at it.
    `model`: this rank's (unwrapped) GPTModel stage or its virtual-stage chunks; `optimizer`: its
    megatron-core optimizer.
    `common` (step counters, sampler state, ...) must be identical on every rank.

    `hf_metadata_dir`: an HF model folder whose config.json, tokenizer files and generation config
    rank 0 copies into `step_N/hf_metadata/` before the checkpoint is published, so that conversion
    (`tools/convert_checkpoint.py`) and evaluation need only the checkpoint. `optimizer=None` saves
    the model alone; `save_rng=False` leaves the RNG streams out (a checkpoint not written by a run)."""
    root = Path(root)
    rank, _ = _rank()
    if hf_metadata_dir is not None:  # checked before any shard is written, by rank 0, told to all
        problem = [None]
        if rank == 0 and not (Path(hf_metadata_dir) / "config.json").is_file():
            problem[0] = f"hf_metadata_dir={hf_metadata_dir} holds no config.json: give the run's HF model folder"
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.broadcast_object_list(problem, src=0)
        if problem[0]:
            raise CheckpointError(problem[0])
    final, partial = _step_dir(root, step), _step_dir(root, step).with_suffix(".partial")
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(partial, ignore_errors=True)  # leftovers of a killed save of the same step
        partial.mkdir()
    _barrier()
    state = _sharded_state(model, optimizer, with_rng=save_rng, is_loading=False)
    contents = {"optimizer": optimizer is not None, "rng": save_rng}
    state["common"] = dict(common, step=step, world_size=_rank()[1], **{_CONTENTS: contents})
    with megatron_on_cpu():
        _write_shards(state, partial)
    _barrier()
    if rank == 0:
        if hf_metadata_dir is not None:
            from policy_split_megatron.bridge.hf_folder import copy_hf_metadata

            copy_hf_metadata(hf_metadata_dir, partial / HF_METADATA_DIR)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
        tmp = root / f".{LATEST}.tmp"
        tmp.write_text(final.name + "\n")
        os.replace(tmp, root / LATEST)
        if keep_last:
            complete = sorted(p for p in root.glob("step_*") if p.is_dir() and p.suffix != ".partial")
            for old in complete[:-keep_last]:
                shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def _write_shards(state: dict, directory: Path) -> None:
    """Collective: megatron-core's torch_dist save of `state` into `directory`, its own planning, file
    writer (`FileSystemWriterAsync.write_preloaded_data`) and finalisation, with this rank's files
    written by threads of this process instead of forked workers (module docstring)."""
    if filesystem_async._results_queue is None:  # results stay in this process: no Manager server for them
        filesystem_async._results_queue = queue.Queue()
    request = dist_checkpointing.save(state, str(directory), async_sharded_save=True)
    failure, written, results_queue = None, {}, None
    if request.async_fn is not None:
        ours = getattr(FileSystemWriterAsync, "write_preloaded_data_multiproc", None)
        if ours is None or getattr(request.async_fn, "func", None) is not ours:
            request.execute_sync()  # another megatron-core's writer: its own way
            return
        transform_list, use_msc = request.async_fn.args
        _, buckets, results_queue = request.async_fn_args
        buckets = request.preload_fn() if request.preload_fn else buckets  # device -> host

        def write(index_bucket):
            index, bucket = index_bucket
            results, done = queue.Queue(), queue.Queue()
            done.put(index)  # the writer marks its task done on this queue
            try:
                FileSystemWriterAsync.write_preloaded_data(transform_list, index, bucket, results, done, True,
                                                           **({"use_msc": True} if use_msc else {}))
                return results.get_nowait()
            except Exception as err:  # noqa: BLE001 - e.g. psutil missing: raised before its own try
                return index, err

        with ThreadPoolExecutor(len(buckets), thread_name_prefix="checkpoint-writer") as pool:
            written = dict(pool.map(write, enumerate(buckets)))
        errors = [r for r in written.values() if isinstance(r, BaseException)]
        failure = f"{type(errors[0]).__name__}: {errors[0]}" if errors else None
    failures = [failure] * _rank()[1]
    if dist.is_initialized():
        dist.all_gather_object(failures, failure)
    if any(failures):
        raise CheckpointError(f"writing checkpoint {directory} failed: " + "; ".join(
            f"rank {rank}: {message}" for rank, message in enumerate(failures) if message))
    if results_queue is not None:
        results_queue.put(written)  # read back by the finalisation (retrieve_write_results)
    _barrier()
    for finalize in request.finalize_fns:  # the global metadata, then metadata.json
        finalize()


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete checkpoint under `root`, or None when there is none yet."""
    pointer = Path(root) / LATEST
    if not pointer.exists():
        return None
    path = Path(root) / pointer.read_text().strip()
    if not (path / "metadata.json").exists():
        raise CheckpointError(f"{pointer} names {path}, which is missing or incomplete; remove {pointer} to start over")
    return path


def load_checkpoint(path: str | Path, model: torch.nn.Module, optimizer=None) -> dict[str, Any]:
    """Collective: restore model and optimizer from a checkpoint directory (any TP/PP layout it
    was saved with) and, when the world size is unchanged, this rank's RNG; return the common
    state given to `save_checkpoint` plus its `step` and `optimizer_restored`. A model-only checkpoint (no optimizer state
    saved) leaves `optimizer` as it is, fresh; one saved without RNG leaves the RNG untouched."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory {path} does not exist")
    if path.suffix == ".partial" or not (path / "metadata.json").exists():
        raise CheckpointError(f"{path} is not a complete checkpoint (a killed save?); use `latest` in its parent")
    try:
        with megatron_on_cpu():
            common = dist_checkpointing.load_common_state_dict(str(path))["common"]
            contents = common.pop(_CONTENTS, {"optimizer": True, "rng": True})  # older checkpoints: both
            if not contents["optimizer"]:
                optimizer = None
            same_world = common.get("world_size") == _rank()[1] and contents["rng"]
            loaded = dist_checkpointing.load(_sharded_state(model, optimizer, with_rng=same_world, is_loading=True),
                                             str(path))
    except (Exception, CheckpointException) as err:  # mismatches surface in several forms
        # (torch's CheckpointException derives from BaseException, hence the explicit name)
        detail = f"{type(err).__name__}: {err}".rstrip(": ")  # a bare `assert` inside megatron-core says nothing else
        raise CheckpointError(f"{path} does not match this model/optimizer: {detail}") from err
    chunks = model_chunks(model)
    for i, chunk in enumerate(chunks):
        chunk.load_state_dict(loaded["model"] if len(chunks) == 1 else loaded["model"][f"chunk{i}"])
    if optimizer is not None:
        load_optimizer_state(optimizer, loaded["optimizer"])
    if same_world:
        _set_rng_state(loaded["rng"])
    common.pop("world_size", None)
    common["optimizer_restored"] = optimizer is not None
    return common
