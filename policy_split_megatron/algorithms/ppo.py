"""PPO-clip surrogate (Eq. 7-8 of arXiv 2604.11510), with clip-higher, dual-clip and a reference KL.

Per token, with rho = pi_theta / pi_old (computed as exp(log pi - log pi_old)):
    loss_t = max(-A_t * rho_t, -A_t * clip(rho_t, 1 - eps_low, 1 + eps_high))
i.e. minus Eq. 7's min[rho A, clip(rho) A]. eps_low == eps_high == 0.2 is the paper's setting (Table 8);
eps_high > eps_low is DAPO's clip-higher (arXiv 2503.14476). Dual clip (Ye et al. 2020, verl
`clip_ratio_c`): for A < 0 the loss is additionally capped at -A * c (c > 1), so a huge ratio on a
negative-advantage token cannot blow up. `clip_eps_low = clip_eps_high = None` means no clip at all
(used by ERPD stage 1 and KL-Cov).

Sequence-level ratio (GSPO, arXiv 2507.18071 §4.1/§4.3; `ratio_level="sequence"`): every token of response i
uses s_i = exp(mean_t (log pi_theta - log pi_old)) (the length-normalised sequence ratio) in the same clipped
surrogate, written GSPO-token style, s_{i,t} = sg[s_i] * pi_theta(y_t) / sg[pi_theta(y_t)]: its value is s_i
(so the clip accepts or rejects the whole sequence) and its gradient is s_i * grad log pi_theta(y_t), which
also carries token-level advantages (Policy Split's Ã). With a constant advantage per sequence and
"seq-mean-token-mean" aggregation this is GSPO's objective exactly (§4.3).

Per-token weights `pg_weight` (rollout/trainer mismatch correction, algorithms/rollout_correction.py)
multiply the surrogate term only, never the reference-KL or entropy terms.

The log-ratio is clamped to ±20 nats before exp() in every loss that uses this surrogate (PPO-clip,
Clip-Cov, KL-Cov, GSPO, ERPD): an overflow guard only. (verl clamps at ±20 in its vanilla PPO loss only.)

Optional reference KL (verl `use_kl_loss`): loss += kl_coef * agg(KL_t(pi_theta || pi_ref)), estimated
on the sampled tokens with k1 or k3; off by default (kl_coef = 0, Table 8 of arXiv 2604.11510).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from policy_split_megatron.algorithms.aggregation import aggregate_loss
from policy_split_megatron.algorithms.common import as_bool_mask, kl_per_token, masked_mean

# exp() of a log-ratio above ~20 nats is already meaningless (and e^89 overflows fp32): an overflow guard.
_LOG_RATIO_CLAMP = 20.0
RATIO_LEVELS = ("token", "sequence")


@dataclass
class PGTerms:
    """Per-token pieces of the clipped surrogate, for losses that build on it."""

    loss: torch.Tensor  # [B, T] per-token surrogate loss (before masking)
    ratio: torch.Tensor  # [B, T]
    unclipped_loss: torch.Tensor  # [B, T] -A * rho
    clipped: torch.Tensor  # [B, T] bool: the PPO clip is the active branch (verl `pg_losses2 > pg_losses1`)
    dual_clipped: torch.Tensor  # [B, T] bool: the dual-clip cap is active


def _token_advantages(advantages: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return advantages.unsqueeze(-1).expand_as(like) if advantages.dim() == 1 else advantages


def clipped_surrogate(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    *,
    clip_eps_low: float | None = 0.2,
    clip_eps_high: float | None = 0.2,
    dual_clip_c: float | None = None,
    ratio_level: str = "token",
    response_mask: torch.Tensor | None = None,
) -> PGTerms:
    """Per-token PPO-clip loss terms; `advantages` is [B, T] or [B] (broadcast) and is used detached.

    ratio_level="sequence" (GSPO) needs `response_mask` to know each response's tokens.
    """
    adv = _token_advantages(advantages, log_probs).detach()
    log_ratio = log_probs - old_log_probs.detach()
    if ratio_level == "sequence":
        if response_mask is None:
            raise ValueError("ratio_level='sequence' (GSPO) needs the response_mask")
        # log s_i = mean over the response of the token log-ratios (GSPO §4.1); value s_i, gradient per token
        log_seq = masked_mean(log_ratio.detach(), as_bool_mask(response_mask), dim=-1)
        log_seq = log_seq.clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP).unsqueeze(-1)
        log_ratio = log_seq + (log_probs - log_probs.detach())
    elif ratio_level == "token":
        log_ratio = log_ratio.clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
    else:
        raise ValueError(f"ratio_level must be one of {RATIO_LEVELS}, got {ratio_level!r}")
    ratio = torch.exp(log_ratio)
    unclipped = -adv * ratio
    if clip_eps_low is None and clip_eps_high is None:
        loss = unclipped
        clipped = torch.zeros_like(ratio, dtype=torch.bool)
    else:
        low = 1.0 - (clip_eps_low if clip_eps_low is not None else float("inf"))
        high = 1.0 + (clip_eps_high if clip_eps_high is not None else float("inf"))
        clipped_loss = -adv * ratio.clamp(low, high)
        loss = torch.maximum(unclipped, clipped_loss)
        clipped = clipped_loss > unclipped
    dual = torch.zeros_like(clipped)
    if dual_clip_c is not None:
        cap = -adv * dual_clip_c
        dual = (adv < 0) & (loss > cap)
        loss = torch.where(dual, cap, loss)
    return PGTerms(loss=loss, ratio=ratio, unclipped_loss=unclipped, clipped=clipped, dual_clipped=dual)


def weighted(per_token_loss: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """per_token_loss * weight.detach() (weight None = unweighted); padding weights are never read."""
    if weight is None:
        return per_token_loss
    return per_token_loss * weight.detach().to(per_token_loss.dtype)


def ppo_metrics(terms: PGTerms, log_probs, old_log_probs, advantages, response_mask) -> dict[str, torch.Tensor]:
    """Local (this micro-batch) diagnostics, masked token means."""
    m = as_bool_mask(response_mask)
    adv = _token_advantages(advantages, log_probs).detach()
    with torch.no_grad():
        return {
            "pg_clipfrac": masked_mean(terms.clipped.float(), m),
            "pg_clipfrac_high": masked_mean((terms.clipped & (adv > 0)).float(), m),
            "pg_clipfrac_low": masked_mean((terms.clipped & (adv < 0)).float(), m),
            "pg_clipfrac_dual": masked_mean(terms.dual_clipped.float(), m),
            # k1 estimate of KL(pi_old || pi_theta) on tokens sampled from pi_old (verl `ppo_kl`).
            "ppo_kl": masked_mean(old_log_probs.detach() - log_probs.detach(), m),
            "ratio_mean": masked_mean(terms.ratio.detach(), m),
            "num_tokens": m.sum().float(),
        }


def reference_kl_term(
    log_probs: torch.Tensor,
    ref_log_probs: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    estimator: str,
    agg_mode: str,
    global_denominator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(aggregated KL loss, per-token KL) for KL(pi_theta || pi_ref) on tokens sampled from pi_theta_old."""
    kl = kl_per_token(log_probs, ref_log_probs.detach(), estimator)
    return aggregate_loss(kl, response_mask, agg_mode, global_denominator), kl


def ppo_clip_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    global_denominator,
    agg_mode: str = "token-mean",
    clip_eps_low: float | None = 0.2,
    clip_eps_high: float | None = 0.2,
    dual_clip_c: float | None = None,
    gradient_mask: torch.Tensor | None = None,
    ref_log_probs: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    kl_estimator: str = "k3",
    ratio_level: str = "token",
    pg_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped policy-gradient loss (+ optional reference KL) for one micro-batch.

    `gradient_mask` (optional [B, T] bool): tokens outside it contribute zero loss but still count in the
    denominator (Forking Tokens). `pg_weight` (optional [B, T], detached): per-token weights of the
    surrogate (rollout correction). Returns (loss, metrics); loss is already divided by the global denominator.
    """
    terms = clipped_surrogate(
        log_probs, old_log_probs, advantages,
        clip_eps_low=clip_eps_low, clip_eps_high=clip_eps_high, dual_clip_c=dual_clip_c,
        ratio_level=ratio_level, response_mask=response_mask,
    )
    per_token = weighted(terms.loss, pg_weight)
    if gradient_mask is not None:
        per_token = per_token * as_bool_mask(gradient_mask).to(per_token.dtype)
    loss = aggregate_loss(per_token, response_mask, agg_mode, global_denominator)
    metrics = ppo_metrics(terms, log_probs, old_log_probs, advantages, response_mask)
    metrics["pg_loss"] = loss.detach()
    if kl_coef != 0.0:
        if ref_log_probs is None:
            raise ValueError("kl_coef != 0 needs ref_log_probs (the reference policy's log-probs)")
        kl_loss, kl = reference_kl_term(
            log_probs, ref_log_probs, response_mask,
            estimator=kl_estimator, agg_mode=agg_mode, global_denominator=global_denominator,
        )
        loss = loss + kl_coef * kl_loss
        metrics["ref_kl"] = masked_mean(kl.detach(), response_mask)
    return loss, metrics
