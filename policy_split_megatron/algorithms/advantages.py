"""Group-relative advantages: GRPO (mean/std of the group) and RLOO (leave-one-out mean).

Eq. 2 of arXiv 2604.11510 (GRPO, Shao et al. 2024):  A_i = (r_i - mean(r_group)) / std(r_group),
implemented as (r - mean) / (std + eps), the epsilon form verl uses (`compute_grpo_outcome_advantage`).

Choices:
  * std estimator: unbiased (Bessel, n - 1), as torch.std and hence verl; `std_unbiased=False` gives the
    population std (n) that some TRL versions use. With 0/1 rewards the two differ by sqrt(n/(n-1)).
  * `normalize_by_std=False` drops the division (Dr. GRPO, arXiv 2503.20783): A = r - mean.
  * eps = 1e-6 (verl's default).
  * A group of one response has no baseline: its advantage is 0. (verl instead sets mean 0 and std 1 for
    singletons, giving A = r; we do not copy that.)
  * Groups are whatever rows share a group id in the tensors given: the caller must pass whole groups.

RLOO (Kool et al. 2019; Ahmadian et al., arXiv 2402.14740 §3): the baseline of response i is the mean
reward of the OTHER n - 1 responses of its group,
    A_i = r_i - (1 / (n - 1)) sum_{j != i} r_j = n / (n - 1) * (r_i - mean(r_group)),
an unbiased baseline (it does not depend on r_i). `normalize_by_std=True` additionally divides by
(std_group + eps), as NeMo-RL's `use_leave_one_out_baseline` with `normalize_rewards` does; the RLOO paper
does not normalise. A group of one has no "other" response: A = 0, as for GRPO.
"""

from __future__ import annotations

import torch

from policy_split_megatron.algorithms.common import as_bool_mask, dense_group_index, group_mean_std

ADVANTAGE_ESTIMATORS = ("grpo", "rloo")


def grpo_advantages(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    normalize_by_std: bool = True,
    std_unbiased: bool = True,
    eps: float = 1e-6,
    estimator: str = "grpo",
) -> torch.Tensor:
    """Sequence-level group advantages [B]: GRPO (Eq. 2 of arXiv 2604.11510) or RLOO (module docstring)."""
    if estimator not in ADVANTAGE_ESTIMATORS:
        raise ValueError(f"advantage estimator must be one of {ADVANTAGE_ESTIMATORS}, got {estimator!r}")
    if rewards.dim() != 1 or group_ids.shape != rewards.shape:
        raise ValueError(f"rewards and group_ids must both be [B], got {tuple(rewards.shape)} "
                         f"and {tuple(group_ids.shape)}")
    index, num_groups = dense_group_index(group_ids)
    mean, std, count = group_mean_std(rewards, index, num_groups, torch.ones_like(rewards), std_unbiased)
    centred = rewards.to(torch.float64) - mean[index]
    if estimator == "rloo":  # r_i - mean of the others = n/(n-1) (r_i - mean); a singleton has no other: 0
        n = count[index]
        centred = torch.where(n > 1, centred * n / (n - 1).clamp(min=1), torch.zeros_like(centred))
    adv = centred / (std[index] + eps) if normalize_by_std else centred
    return adv.to(rewards.dtype if rewards.is_floating_point() else torch.float32)


def broadcast_to_tokens(values: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """[B] -> [B, T]: each response token gets its sequence's value; padding gets 0."""
    m = as_bool_mask(response_mask)
    return torch.where(m, values.unsqueeze(-1).to(torch.float32), torch.zeros((), device=values.device))
