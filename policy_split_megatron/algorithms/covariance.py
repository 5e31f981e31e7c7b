"""Covariance-based entropy control: Clip-Cov and KL-Cov (Cui et al., arXiv 2505.22617, §4), with verl's
semantics (`compute_policy_loss_clip_cov` / `compute_policy_loss_kl_cov`).

Token "covariance" (Eq. 10 of 2505.22617): a per-token centred cross-product, not an estimate over a
distribution,
    cov_t = (A_t - mean A) * (log pi_theta(y_t) - mean log pi_theta.detach())
with the means over the valid tokens of the tensors passed (verl: the current micro-batch on this GPU,
centering="micro_batch"). centering="global" uses means over a larger set (e.g. the micro-batch across
data-parallel ranks): compute `covariance_centering_stats` locally, all-reduce (SUM) them, and pass
`centering_means_from_stats(...)` as `centering_means`.

Clip-Cov (Eq. 11-12): among tokens with lb < cov < ub (strict, raw values), not already clipped by PPO and
not padding, pick max(int(ratio * N), 1) uniformly without replacement (N = valid tokens here) and detach
them: their loss is zeroed but they still count in the denominator.
KL-Cov (Eq. 13-14): the top-k tokens by cov, k = max(1, int(N * ratio)), get loss -A*rho + beta*|log pi -
log pi_old|; every token gets the UNCLIPPED -A*rho (no PPO clip in KL-Cov). `ratio` is a FRACTION
(2e-4 = 0.02 %); the authors' original `k_percent` was in percent (their 0.2 = 2e-3 here).

`pg_weight` (rollout correction) multiplies the policy-gradient term of each token: Clip-Cov's clipped
surrogate, KL-Cov's -A*rho (not its |log ratio| penalty).
"""

from __future__ import annotations

import torch

from policy_split_megatron.algorithms.aggregation import aggregate_loss
from policy_split_megatron.algorithms.common import as_bool_mask, masked_mean, masked_sum
from policy_split_megatron.algorithms.ppo import clipped_surrogate, weighted


def covariance_centering_stats(
    advantages: torch.Tensor, log_probs: torch.Tensor, response_mask: torch.Tensor
) -> torch.Tensor:
    """[sum A, sum log pi, count] over this rank's valid tokens (float64): all-reduce SUM it for "global"."""
    m = as_bool_mask(response_mask)
    a = advantages.detach().to(torch.float64)
    lp = log_probs.detach().to(torch.float64)
    return torch.stack([masked_sum(a, m), masked_sum(lp, m), m.sum().to(torch.float64)])


def centering_means_from_stats(stats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean A, mean log pi) from (all-reduced) covariance_centering_stats."""
    count = stats[2].clamp(min=1)
    return stats[0] / count, stats[1] / count


def token_covariance(
    advantages: torch.Tensor,
    log_probs: torch.Tensor,
    response_mask: torch.Tensor,
    centering_means: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Detached per-token cov (Eq. 10 of arXiv 2505.22617); padding gets -inf so it is never selected."""
    m = as_bool_mask(response_mask)
    a = advantages.detach().float()
    lp = log_probs.detach().float()
    if centering_means is None:
        mean_a, mean_lp = masked_mean(a, m), masked_mean(lp, m)
    else:
        mean_a, mean_lp = (torch.as_tensor(v, dtype=torch.float32, device=a.device) for v in centering_means)
    cov = (a - mean_a) * (lp - mean_lp)
    return torch.where(m, cov, torch.full_like(cov, float("-inf")))


def clip_cov_selection(
    cov: torch.Tensor,
    response_mask: torch.Tensor,
    ppo_clipped: torch.Tensor,
    *,
    ratio: float,
    lb: float,
    ub: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, int]:
    """(bool mask of the tokens Clip-Cov detaches, number of candidates)."""
    m = as_bool_mask(response_mask)
    candidates = m & ~ppo_clipped & (cov > lb) & (cov < ub)
    flat = candidates.reshape(-1).nonzero(as_tuple=True)[0]
    num_valid = int(m.sum())
    selected = torch.zeros_like(candidates)
    if num_valid == 0 or flat.numel() == 0:
        return selected, int(flat.numel())
    clip_num = max(int(ratio * num_valid), 1)
    perm_device = generator.device if generator is not None else flat.device
    perm = torch.randperm(flat.numel(), generator=generator, device=perm_device).to(flat.device)
    chosen = flat[perm[: min(clip_num, flat.numel())]]
    selected.view(-1)[chosen] = True
    return selected, int(flat.numel())


def kl_cov_selection(cov: torch.Tensor, response_mask: torch.Tensor, *, ratio: float) -> torch.Tensor:
    """Bool mask of the top-k tokens by cov, k = max(1, int(N * ratio)) over the N valid tokens."""
    m = as_bool_mask(response_mask)
    selected = torch.zeros_like(m)
    num_valid = int(m.sum())
    if num_valid == 0:
        return selected
    k = min(max(1, int(num_valid * ratio)), num_valid)
    top = torch.topk(cov.reshape(-1), k, largest=True).indices  # padding is -inf: never in the top k <= N
    selected.view(-1)[top] = True
    return selected


def clip_cov_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    global_denominator,
    agg_mode: str = "token-mean",
    clip_eps_low: float | None = 0.2,
    clip_eps_high: float | None = 0.2,
    ratio: float = 2e-4,
    lb: float = 1.0,
    ub: float = 5.0,
    generator: torch.Generator | None = None,
    centering_means: tuple[torch.Tensor, torch.Tensor] | None = None,
    pg_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clip-Cov loss (Eq. 12 of arXiv 2505.22617, verl semantics) for one micro-batch."""
    adv = advantages.unsqueeze(-1).expand_as(log_probs) if advantages.dim() == 1 else advantages
    terms = clipped_surrogate(log_probs, old_log_probs, adv, clip_eps_low=clip_eps_low, clip_eps_high=clip_eps_high)
    m = as_bool_mask(response_mask)
    cov = token_covariance(adv, log_probs, m, centering_means)
    selected, num_candidates = clip_cov_selection(
        cov, m, terms.clipped & m, ratio=ratio, lb=lb, ub=ub, generator=generator
    )
    per_token = weighted(terms.loss, pg_weight) * (~selected).to(terms.loss.dtype)
    loss = aggregate_loss(per_token, m, agg_mode, global_denominator)
    metrics = {
        "clip_cov_selected": selected.sum().float(),
        "clip_cov_selected_frac": masked_mean(selected.float(), m),
        "clip_cov_candidates": torch.tensor(float(num_candidates)),
        "pg_clipfrac": masked_mean(terms.clipped.float(), m),
        "pg_loss": loss.detach(),
    }
    return loss, metrics


def kl_cov_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    global_denominator,
    agg_mode: str = "token-mean",
    ratio: float = 2e-4,
    beta: float = 1.0,
    centering_means: tuple[torch.Tensor, torch.Tensor] | None = None,
    pg_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """KL-Cov loss (Eq. 14 of arXiv 2505.22617, verl semantics) for one micro-batch; beta may be annealed."""
    adv = advantages.unsqueeze(-1).expand_as(log_probs) if advantages.dim() == 1 else advantages
    terms = clipped_surrogate(log_probs, old_log_probs, adv, clip_eps_low=None, clip_eps_high=None)
    m = as_bool_mask(response_mask)
    selected = kl_cov_selection(token_covariance(adv, log_probs, m, centering_means), m, ratio=ratio)
    abs_kl = (log_probs - old_log_probs.detach()).abs()
    per_token = weighted(terms.unclipped_loss, pg_weight) + beta * abs_kl * selected.to(abs_kl.dtype)
    loss = aggregate_loss(per_token, m, agg_mode, global_denominator)
    metrics = {
        "kl_cov_selected": selected.sum().float(),
        "kl_cov_selected_frac": masked_mean(selected.float(), m),
        "kl_cov_beta": torch.tensor(float(beta)),
        "ppo_kl_abs": masked_mean(abs_kl.detach(), m),
        "pg_loss": loss.detach(),
    }
    return loss, metrics
