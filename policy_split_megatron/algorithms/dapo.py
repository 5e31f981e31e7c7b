"""DAPO's sampling and reward-shaping pieces (Yu et al., arXiv 2503.14476 §3.2-3.4), as pure functions.

Clip-higher (Eq. 10) is `ppo.clip_eps_high > ppo.clip_eps_low` and the token-level loss (Eq. 12) is
`loss_agg_mode="token-mean"` (algorithms/aggregation.py); the rest lives here:

* Dynamic sampling (Eq. 11, constraint 0 < |{o_i correct}| < G): a group whose rewards are all equal has
  zero advantage (and, under Policy Split's clamp, zero HE bonus), so it carries no gradient. The trainer
  over-samples, drops such groups (`dynamic_sampling_keep`), and generates more prompts until the batch is
  full or `max_generation_rounds` rounds have run. "All equal" is tested on the TASK reward before any
  length shaping (DAPO filters on accuracy; verl `filter_groups.metric=acc`), within `tolerance`.
* Overlong filtering (§3.4): responses the engine cut at its length limit (no EOS) leave the loss and its
  denominator (`overlong_filter_mask`); they still count in their group's advantage statistics.
* Soft overlong punishment (Eq. 13): R_length(y) = 0 if |y| <= L_max - L_cache;
  ((L_max - L_cache) - |y|) / L_cache if L_max - L_cache < |y| <= L_max; -1 if |y| > L_max; scaled by a
  penalty factor (verl `overlong_buffer.penalty_factor`, 1.0 = the paper) and ADDED to the task reward
  before the advantage. L_max = the engine's generation limit for the response, L_cache = the buffer.
"""

from __future__ import annotations

import torch

from policy_split_megatron.algorithms.common import as_bool_mask, dense_group_index


def soft_overlong_penalty(
    response_lengths: torch.Tensor,
    max_length: int | torch.Tensor,
    buffer_length: int,
    *,
    penalty_factor: float = 1.0,
) -> torch.Tensor:
    """Eq. 13 of arXiv 2503.14476 times `penalty_factor`: [B] float32, <= 0, to add to the rewards.

    `max_length` (L_max) may be one limit or one per response (e.g. per generating mode)."""
    if buffer_length <= 0:
        raise ValueError(f"the overlong buffer L_cache must be > 0, got {buffer_length}")
    lengths = response_lengths.to(torch.float64)
    limit = torch.as_tensor(max_length, dtype=torch.float64, device=lengths.device).expand_as(lengths)
    if bool((limit <= buffer_length).any()):
        raise ValueError(f"the overlong buffer ({buffer_length} tokens) must be shorter than the generation limit "
                         f"L_max ({limit.min().item():.0f} tokens)")
    start = limit - buffer_length
    linear = (start - lengths) / buffer_length
    penalty = torch.where(lengths <= start, torch.zeros_like(lengths), torch.where(lengths <= limit, linear, -1.0))
    return (penalty_factor * penalty).to(torch.float32)


def overlong_filter_mask(response_mask: torch.Tensor, truncated: torch.Tensor) -> torch.Tensor:
    """The response mask without the rows of truncated responses ([B] bool `truncated`)."""
    return as_bool_mask(response_mask) & ~truncated.to(torch.bool).unsqueeze(-1)


def dynamic_sampling_keep(
    rewards: torch.Tensor, group_ids: torch.Tensor, *, tolerance: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(keep [B] bool per response, kept_groups: the sorted group ids kept) for DAPO dynamic sampling.

    A group is dropped when max(r) - min(r) <= tolerance over its responses (all equal; a group of one
    response is always dropped: it has no baseline). Pass the TASK rewards of whole groups; for Policy
    Split, one group = all responses of a prompt from both modes (group id = prompt index).
    """
    if rewards.dim() != 1 or group_ids.shape != rewards.shape:
        raise ValueError(f"rewards and group_ids must both be [B], got {tuple(rewards.shape)} and {tuple(group_ids.shape)}")
    index, num_groups = dense_group_index(group_ids)
    r = rewards.to(torch.float64)
    high = torch.full((num_groups,), float("-inf"), dtype=r.dtype, device=r.device).scatter_reduce(0, index, r, "amax")
    low = torch.full((num_groups,), float("inf"), dtype=r.dtype, device=r.device).scatter_reduce(0, index, r, "amin")
    keep_group = (high - low) > tolerance
    return keep_group[index], torch.unique(group_ids)[keep_group]
