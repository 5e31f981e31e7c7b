"""Extreme Region Policy Distillation (ERPD, arXiv 2605.25582), two stages on a FIXED rollout set.

The paper's exact losses are not public (see docs/algorithms.md); these are this package's definitions.

Stage 1, weakly constrained off-policy optimisation: many epochs over stored responses, the ratio taken
against the STORED log-probs (the behaviour policy, never re-anchored), with a wide clip or none:
  * "pg":  -A_i * rho_t (clipped iff an epsilon is given), A the GRPO advantage of the stored group;
  * "ce":  -w_i * log pi(o_t) on responses with reward > threshold (SFT on the positives), w_i = 1 or
           max(A_i, 0) (advantage-weighted); the loss is normalised over the tokens of those responses;
  * "mse": 0.5 * (log pi(o_t) - log pi_ref(o_t) - s * A_i)^2: regress the per-token log-ratio to the
           (frozen, un-trained) reference toward a target proportional to the advantage. At the optimum
           log pi/pi_ref = s * A, the per-token analogue of the KL-regularised optimum
           pi* ∝ pi_ref exp(A / beta) with s = 1 / beta. For weak teachers ("MSE-trained with unlearned
           policy reference"). Default s = 0.1.

Stage 2, distillation into the base policy under a trust region, on the same stored responses:
  delta_t = log pi_T(o_t) - log pi_base(o_t)      (teacher log-probs computed once and stored;
                                                   base = the policy before stage 1 = pi_old of stage 2)
  signal constructions: "log_ratio" (delta), "log_ratio_clipped" (clip(delta, -c, c)), "sign" (sign(delta),
  for degenerate teachers whose magnitudes are meaningless), "reference_corrected" (log pi_T - log pi_T0,
  T0 = the teacher's own starting point, = base unless given). With K teachers, each teacher's signal is
  built, then the K signals are averaged. Then the signal is the token-level advantage of a clipped
  surrogate around the base (rho = pi_theta / pi_base) plus kl_coef * agg(k3 KL(pi_base || pi_theta));
  optionally tokens whose per-token k3 exceeds a bound lose their surrogate term (the KL term still pulls
  them back).
"""

from __future__ import annotations

from typing import Sequence

import torch

from policy_split_megatron.algorithms.aggregation import aggregate_loss
from policy_split_megatron.algorithms.common import as_bool_mask, kl_per_token, masked_kl, masked_mean
from policy_split_megatron.algorithms.ppo import clipped_surrogate, ppo_metrics

STAGE1_OBJECTIVES = ("pg", "ce", "mse")
SIGNAL_CONSTRUCTIONS = ("log_ratio", "log_ratio_clipped", "sign", "reference_corrected")


def _as_list(x: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [x] if isinstance(x, torch.Tensor) else list(x)


def stage1_ce_weights(
    rewards: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    reward_threshold: float = 0.0,
    advantage_weighted: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-token weights [B, T], mask of the tokens of the positive responses [B, T])."""
    positive = rewards > reward_threshold
    weight = advantages.clamp(min=0.0) if advantage_weighted else torch.ones_like(advantages)
    mask = as_bool_mask(response_mask) & positive.unsqueeze(-1)
    weights = torch.where(mask, weight.unsqueeze(-1).to(torch.float32), torch.zeros((), device=rewards.device))
    return weights, mask


def stage1_ce_loss(
    log_probs: torch.Tensor, weights: torch.Tensor, response_mask: torch.Tensor, *, agg_mode: str, global_denominator
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted cross-entropy (SFT) on the stored positive responses: -w * log pi(o_t)."""
    loss = aggregate_loss(-weights.detach() * log_probs, response_mask, agg_mode, global_denominator)
    return loss, {"ce_loss": loss.detach(), "ce_tokens": as_bool_mask(response_mask).sum().float()}


def stage1_mse_loss(
    log_probs: torch.Tensor,
    ref_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    target_scale: float = 0.1,
    agg_mode: str,
    global_denominator,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """0.5 * (log pi - log pi_ref - target_scale * A)^2 per token (A [B] or [B, T])."""
    adv = advantages.unsqueeze(-1).expand_as(log_probs) if advantages.dim() == 1 else advantages
    residual = log_probs - ref_log_probs.detach() - target_scale * adv.detach()
    loss = aggregate_loss(0.5 * residual * residual, response_mask, agg_mode, global_denominator)
    return loss, {"mse_loss": loss.detach(), "mse_residual_abs": masked_mean(residual.detach().abs(), response_mask)}


def teacher_signal(
    teacher_log_probs: torch.Tensor | Sequence[torch.Tensor],
    base_log_probs: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    construction: str = "log_ratio",
    clip: float = 1.0,
    scale: float = 1.0,
    teacher_ref_log_probs: torch.Tensor | Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Token-level stage-2 advantage [B, T] (padding 0), averaged over teachers, times `scale`."""
    if construction not in SIGNAL_CONSTRUCTIONS:
        raise ValueError(f"construction must be one of {SIGNAL_CONSTRUCTIONS}, got {construction!r}")
    teachers = _as_list(teacher_log_probs)
    if not teachers:
        raise ValueError("teacher_log_probs is empty: stage 2 needs at least one teacher")
    if construction == "reference_corrected" and teacher_ref_log_probs is not None:
        refs = _as_list(teacher_ref_log_probs)
        if len(refs) != len(teachers):
            raise ValueError(f"{len(teachers)} teachers but {len(refs)} teacher reference log-prob tensors")
    else:
        refs = [base_log_probs] * len(teachers)
    signals = []
    for teacher, ref in zip(teachers, refs):
        delta = teacher.detach().float() - ref.detach().float()
        if construction == "log_ratio_clipped":
            delta = delta.clamp(-clip, clip)
        elif construction == "sign":
            delta = torch.sign(delta)
        signals.append(delta)
    signal = scale * torch.stack(signals).mean(0)
    return torch.where(as_bool_mask(response_mask), signal, torch.zeros_like(signal))


def distill_loss(
    log_probs: torch.Tensor,
    base_log_probs: torch.Tensor,
    token_advantages: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    global_denominator,
    agg_mode: str = "token-mean",
    clip_eps_low: float | None = 0.2,
    clip_eps_high: float | None = 0.2,
    kl_coef: float = 0.1,
    kl_estimator: str = "k3",
    kl_drop_bound: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Stage-2 loss: clipped surrogate around the base + kl_coef * agg(KL(pi_base || pi_theta)).

    The stored responses were sampled from the base, so the per-token estimator is evaluated with the
    base as the sampling policy. Tokens whose detached per-token KL exceeds `kl_drop_bound` get no
    surrogate term (they still count in the denominator and still feel the KL term).
    """
    m = as_bool_mask(response_mask)
    terms = clipped_surrogate(log_probs, base_log_probs, token_advantages,
                              clip_eps_low=clip_eps_low, clip_eps_high=clip_eps_high)
    kl = kl_per_token(base_log_probs.detach(), log_probs, kl_estimator)
    surrogate = terms.loss
    dropped = torch.zeros_like(m)
    if kl_drop_bound is not None:
        dropped = m & (kl.detach() > kl_drop_bound)
        surrogate = surrogate * (~dropped).to(surrogate.dtype)
    pg_loss = aggregate_loss(surrogate, m, agg_mode, global_denominator)
    kl_loss = aggregate_loss(kl, m, agg_mode, global_denominator)
    loss = pg_loss + kl_coef * kl_loss
    metrics = ppo_metrics(terms, log_probs, base_log_probs, token_advantages, m)
    metrics.update({
        "pg_loss": pg_loss.detach(),
        "kl_to_base": masked_mean(kl.detach(), m),
        "kl_dropped_frac": masked_mean(dropped.float(), m),
        "signal_mean": masked_mean(token_advantages.detach(), m),
    })
    return loss, metrics


def kl_to_base(
    policy_log_probs: torch.Tensor,
    base_log_probs: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    sampled_from: str = "base",
    reduction: str = "seq-mean-token-mean",
) -> dict[str, torch.Tensor]:
    """k1 and k3 estimates of the KL between a policy (stage 1 or 2) and the base on the same tokens.

    sampled_from="base" (the stored ERPD responses): estimates KL(pi_base || pi);
    sampled_from="policy" (fresh samples of the policy): estimates KL(pi || pi_base).
    """
    if sampled_from not in ("base", "policy"):
        raise ValueError(f"sampled_from must be 'base' or 'policy', got {sampled_from!r}")
    p, q = (base_log_probs, policy_log_probs) if sampled_from == "base" else (policy_log_probs, base_log_probs)
    p, q = p.detach().float(), q.detach().float()
    return {f"kl_to_base_{e}": masked_kl(p, q, response_mask, e, reduction) for e in ("k1", "k3")}
