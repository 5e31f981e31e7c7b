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
