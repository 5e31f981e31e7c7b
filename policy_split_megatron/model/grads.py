"""Gradient reductions that megatron-core performs inside its (CUDA-only) DDP wrapper.

On GPUs the trainer wraps the model in megatron-core's `DistributedDataParallel` and calls its
`finalize_model_grads`. Its gradient buffers are allocated on CUDA, so CPU runs use this module,
which applies the same rules to plain `.grad` tensors:

- QK-layernorm weights are replicated over TP but each rank only sees its own heads: their
  gradients are partial sums and are all-reduced (SUM) over the tensor-parallel group.
- With tied embeddings split over pipeline stages, the first stage's embedding and the last
  stage's output-layer copy must receive the sum of both gradients (the embedding group).
- Data-parallel replicas sum their gradients (losses are normalised by global token or sequence
  counts, so a SUM gives the full-batch gradient whatever the DP size).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors


def _all_reduce_(grads: list[torch.Tensor], group) -> None:
    if not grads:
        return
    flat = _flatten_dense_tensors(grads)
    dist.all_reduce(flat, group=group)
    for grad, synced in zip(grads, _unflatten_dense_tensors(flat, grads)):
        grad.copy_(synced)


def finalize_grads(model: torch.nn.Module, *, data_parallel: bool = True) -> None:
    """Apply megatron-core's cross-rank gradient rules to `param.grad` of this rank's stage."""
    named = [(n, p) for n, p in model.named_parameters() if p.grad is not None]
    if parallel_state.get_tensor_model_parallel_world_size() > 1:
        qk_norms = [p.grad for n, p in named if "q_layernorm" in n or "k_layernorm" in n]
        _all_reduce_(qk_norms, parallel_state.get_tensor_model_parallel_group())
    if parallel_state.get_pipeline_model_parallel_world_size() > 1 and getattr(
        model, "share_embeddings_and_output_weights", False
    ):
        if parallel_state.is_rank_in_embedding_group():
            tied = [p.grad for n, p in named if n in ("embedding.word_embeddings.weight", "output_layer.weight")]
            _all_reduce_(tied, parallel_state.get_embedding_group())
    if data_parallel and parallel_state.get_data_parallel_world_size() > 1:
        _all_reduce_([p.grad for _, p in named], parallel_state.get_data_parallel_group())
