"""The policy's per-token log-probs and entropies of whole sequences, micro-batched by tokens.

Alignment: position t of the outputs holds log pi(input_ids[t] | input_ids[:t]) and the entropy of
that next-token distribution, so a response mask over `input_ids` selects exactly the response
tokens' values (position 0 has no prediction and holds 0).
"""

from __future__ import annotations

import torch

from policy_split_megatron.model import ModelArchitecture, forward_logits
from policy_split_megatron.model.precision import fp8_sequence_alignment
from policy_split_megatron.ops import logprobs_and_entropy


def plan_micro_batches(lengths: list[int], token_budget: int) -> list[list[int]]:
    """Group consecutive rows so that rows x longest row <= token_budget (the padded size of the
    micro-batch). A row longer than the budget forms a micro-batch of its own."""
    if token_budget <= 0:
        raise ValueError(f"token_budget must be > 0, got {token_budget}")
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for row, length in enumerate(lengths):
        if current and (len(current) + 1) * max(longest, length) > token_budget:
            batches.append(current)
            current, longest = [], 0
        current.append(row)
        longest = max(longest, length)
    if current:
        batches.append(current)
    return batches


def sequence_alignment(model: torch.nn.Module) -> int:
    """Row length multiple the model needs: Transformer Engine's FP8 GEMMs reject token counts that
    are not multiples of 16 (32 for MXFP8); 1 otherwise."""
    config = getattr(model, "config", None)
    return fp8_sequence_alignment(getattr(config, "fp8", None), getattr(config, "fp8_recipe", None))


def token_logprobs(
    model: torch.nn.Module,
    arch: ModelArchitecture,
    input_ids: torch.Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int | None = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """[b, L] token ids (right-padded) -> ([b, L] log-probs, [b, L] entropies), fp32, aligned as
    described in the module docstring. Gradients flow when called outside no_grad."""
    width, align = input_ids.shape[1], sequence_alignment(model)
    if width % align:  # right padding: causal attention keeps the real positions unchanged
        input_ids = torch.nn.functional.pad(input_ids, (0, align - width % align))
    logits = forward_logits(model, input_ids, arch)
    logp, entropy = logprobs_and_entropy(
        logits[:, :-1], input_ids[:, 1:], temperature=temperature, chunk_size=chunk_size, vocab_size=arch.vocab_size
    )
    zero = logp.new_zeros(logp.shape[0], 1)
    return torch.cat([zero, logp], dim=1)[:, :width], torch.cat([zero, entropy], dim=1)[:, :width]


@torch.no_grad()
def batched_token_logprobs(
    model: torch.nn.Module,
    arch: ModelArchitecture,
    input_ids: torch.Tensor,
    lengths: torch.Tensor,
    *,
    token_budget: int,
    temperature: float = 1.0,
    chunk_size: int | None = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`token_logprobs` over a whole batch without gradients (old/reference log-probs), each
    micro-batch trimmed to its longest row."""
    logp = torch.zeros(input_ids.shape, dtype=torch.float32)
    entropy = torch.zeros(input_ids.shape, dtype=torch.float32)
    for rows in plan_micro_batches(lengths.tolist(), token_budget):
        index = torch.tensor(rows)
        width = int(lengths[index].max())
        lp, ent = token_logprobs(model, arch, input_ids[index, :width], temperature=temperature, chunk_size=chunk_size)
        logp[index, :width], entropy[index, :width] = lp.cpu(), ent.cpu()
    return logp, entropy
