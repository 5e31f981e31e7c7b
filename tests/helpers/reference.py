"""Independent references for the Megatron policy: transformers' own forward and autograd."""

from __future__ import annotations

import torch


def hf_logits_and_grads(folder, input_ids: torch.Tensor, upstream: torch.Tensor):
    """Logits of the HF model at `folder`, and the gradients of sum(logits * upstream) with
    respect to every HF parameter (float32)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    logits = model(input_ids).logits
    (logits * upstream).sum().backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters()}
    if model.config.tie_word_embeddings:
        grads.setdefault("lm_head.weight", grads["model.embed_tokens.weight"])
    return logits.detach(), grads


def local_vocab_slice(full: torch.Tensor, tp_rank: int, local_width: int) -> torch.Tensor:
    """This TP rank's columns of a full-vocabulary tensor, zero-padded to the padded vocab."""
    start = tp_rank * local_width
    out = full.new_zeros((*full.shape[:-1], local_width))
    cols = full[..., start : start + local_width]
    out[..., : cols.shape[-1]] = cols
    return out


def max_relative_grad_error(model, arch, hf_grads) -> float:
    """Largest |megatron grad - HF grad cut to this rank's shard| / max|HF grad| over the stage's
    parameters (call after the cross-rank gradient reductions; reads megatron-core DDP's `main_grad`
    when the model is wrapped, `.grad` otherwise)."""
    from megatron.core import parallel_state as ps

    from policy_split_megatron.bridge.convert import resolve_parameters

    rank, size = ps.get_tensor_model_parallel_rank(), ps.get_tensor_model_parallel_world_size()
    params = dict(model.named_parameters())
    worst = 0.0
    for entry in resolve_parameters(model, arch):
        ref = entry.mapping.layout.shard([hf_grads[n] for n in entry.hf_names], rank, size, arch)
        param = params[entry.local_name]
        grad = param.main_grad if getattr(param, "main_grad", None) is not None else param.grad
        worst = max(worst, (grad - ref).abs().max().item() / (ref.abs().max().item() + 1e-6))
    return worst


def wrap_for_gradients(model):
    """megatron-core's DistributedDataParallel around `model` (fp32 gradient buffers, no distributed
    optimizer): after a backward pass, `reduce_gradients(wrapped)` applies megatron-core's own
    cross-rank rules (DP reduction, TP sum of QK-norm gradients, tied embeddings over PP stages) and
    each parameter's `main_grad` holds the result."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    from policy_split_megatron.cpu_shims import megatron_on_cpu

    with megatron_on_cpu():
        return DistributedDataParallel(config=model.config, ddp_config=DistributedDataParallelConfig(
            grad_reduce_in_fp32=True), module=model)


def reduce_gradients(wrapped) -> None:
    from megatron.core.distributed import finalize_model_grads

    from policy_split_megatron.cpu_shims import megatron_on_cpu

    with megatron_on_cpu():
        finalize_model_grads([wrapped])
