"""Per-token log-probs and entropies of whole rows without gradients: old-policy, reference,
teacher and evaluation passes, through megatron-core's schedule in `forward_only` mode.

Rows are packed by token budget (`engine/packing.py`); the last pipeline stage computes the
values and broadcasts them to the other stages, so every rank of a data-parallel replica returns
the same [B, L] tensors, on the engine's device. Position t holds log pi(input_ids[t] |
input_ids[:t]) and the entropy of that next-token distribution; position 0 and padding hold 0.
"""

from __future__ import annotations

import torch

from policy_split_megatron.engine.collectives import broadcast_from_last_stage
from policy_split_megatron.engine.packing import Pack, dummy_pack, pack_batch


def _collect(pack: Pack, log_probs: torch.Tensor, entropy: torch.Tensor):
    zero = log_probs.new_zeros(())
    return zero, torch.zeros((), dtype=torch.int, device=log_probs.device), {
        "log_probs": log_probs.detach(), "entropy": entropy.detach()}


@torch.no_grad()
def score_rows(engine, input_ids: torch.Tensor, lengths: torch.Tensor, *, token_budget: int,
               temperature: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """([B, L] log-probs, [B, L] entropies), fp32 on `engine.device`, identical on every stage.
    `input_ids` [B, L] right-padded with real lengths `lengths`; a batch of 0 rows is allowed
    (the rank still runs the schedule once so pipeline peers stay in step). `temperature`: default
    the engine's (the rollout temperature)."""
    device = engine.device
    rows, width = input_ids.shape
    log_probs = torch.zeros((rows, width), dtype=torch.float32, device=device)
    entropy = torch.zeros((rows, width), dtype=torch.float32, device=device)
    packs = pack_batch(input_ids, lengths, token_budget, engine.alignment) if rows else [dummy_pack(engine.alignment)]
    packs = [p.to(device) for p in packs]
    reports = engine.run(packs, _collect, forward_only=True, temperature=temperature)
    for pack, report in zip(packs, reports):
        if pack.is_dummy:
            continue
        log_probs[pack.rows, : pack.width] = report["log_probs"][: pack.num_rows]
        entropy[pack.rows, : pack.width] = report["entropy"][: pack.num_rows]
    broadcast_from_last_stage([log_probs, entropy])
    return log_probs, entropy
