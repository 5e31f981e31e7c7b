"""The few collectives the trainer issues itself (everything else is megatron-core's).

Tensors meet a collective on the backend's device: CUDA for NCCL, the CPU for gloo
(`comm_device`). Results of the last pipeline stage (log-probs, loss reports) reach the other
stages by a broadcast over the pipeline group, so that every rank of a data-parallel replica holds
the same numbers; reports are summed over data-parallel ranks before anyone logs them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
import torch.distributed as dist
from megatron.core import parallel_state


def comm_device() -> torch.device:
    """The device a tensor must live on to enter a collective of the default backend."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _last_stage_rank() -> int:
    group = parallel_state.get_pipeline_model_parallel_group()
    return dist.get_global_rank(group, dist.get_world_size(group) - 1)


def broadcast_from_last_stage(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """In place on every stage: the last pipeline stage's values of `tensors` (same shapes and
    dtypes on every stage; allocate them on the other stages). No-op without pipeline parallelism."""
    if parallel_state.get_pipeline_model_parallel_world_size() == 1:
        return tensors
    group = parallel_state.get_pipeline_model_parallel_group()
    src = _last_stage_rank()
    device = comm_device()
    for tensor in tensors:
        staged = tensor if tensor.device == device else tensor.to(device)
        dist.broadcast(staged, src=src, group=group)
        if staged is not tensor:
            tensor.copy_(staged)
    return tensors


def sum_reports(reports: Iterable[Mapping[str, torch.Tensor]], keys: list[str]) -> dict[str, float]:
    """Sum each key of the last stage's per-micro-batch `reports` over micro-batches and
    data-parallel ranks; every rank gets the totals (one all-reduce and one broadcast for all keys,
    one host sync). `keys` must be the same list on every rank (reports may lack some keys: 0)."""
    device = comm_device()
    totals = torch.zeros(len(keys), dtype=torch.float64, device=device)
    for report in reports:
        for i, key in enumerate(keys):
            if key in report:
                totals[i] += torch.as_tensor(report[key]).detach().to(device=device, dtype=torch.float64).sum()
    if parallel_state.get_data_parallel_world_size() > 1:
        dist.all_reduce(totals, group=parallel_state.get_data_parallel_group())
    broadcast_from_last_stage([totals])
    return dict(zip(keys, totals.tolist()))


def agree_max(value: float | int) -> float:
    """The maximum of `value` over all ranks (counts, failure flags): every rank takes the same branch."""
    flag = torch.tensor(float(value), dtype=torch.float64, device=comm_device())
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return float(flag)


def dp_sum(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` summed over the data-parallel ranks (a new tensor on `tensor`'s device)."""
    staged = tensor.detach().to(comm_device()).clone()
    if parallel_state.get_data_parallel_world_size() > 1:
        dist.all_reduce(staged, group=parallel_state.get_data_parallel_group())
    return staged.to(tensor.device)


def agreed_keys(local: Iterable[str]) -> list[str]:
    """The union of every rank's metric names, sorted: the one key list all ranks reduce (a rank
    with no rows, or a stage without the loss, may know none of them)."""
    local = sorted(set(local))
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return local
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, local)
    return sorted({k for keys in gathered for k in keys})


def dp_weighted_means(pairs: Mapping[str, tuple[float, float]]) -> dict[str, float]:
    """{name: (mean on this rank, its weight)} -> the weighted mean over data-parallel ranks (rows,
    tokens or sequences as weights); names with zero total weight are left out."""
    keys = agreed_keys(pairs)
    values = torch.tensor([[pairs[k][0] * pairs[k][1], pairs[k][1]] if k in pairs and pairs[k][1] else [0.0, 0.0]
                           for k in keys], dtype=torch.float64, device=comm_device()).reshape(-1, 2)
    if parallel_state.get_data_parallel_world_size() > 1:
        dist.all_reduce(values, group=parallel_state.get_data_parallel_group())
    return {k: s / w for k, (s, w) in zip(keys, values.tolist()) if w > 0}


def dp_max(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor`'s elementwise maximum over the data-parallel ranks (a new tensor on its device)."""
    staged = tensor.detach().to(comm_device()).clone()
    if parallel_state.get_data_parallel_world_size() > 1:
        dist.all_reduce(staged, op=dist.ReduceOp.MAX, group=parallel_state.get_data_parallel_group())
    return staged.to(tensor.device)
