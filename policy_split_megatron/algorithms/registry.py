"""One call path for every algorithm: the trainer calls these four functions whatever `cfg.name` is.

    req = requirements(cfg)                                  # which optional tensors to compute
    adv = compute_advantages(cfg, RolloutBatch(...))         # once per rollout batch (whole groups)
    for each mini-batch:
        d = sum(loss_denominator(cfg, mb.response_mask) for mb in micro-batches); all_reduce(d, SUM, DP)
        for each micro-batch mb:
            loss, metrics = compute_loss(cfg, MicroBatch(...), global_denominator=d, step=step)
            loss.backward()                                  # grads SUMMED over micro-batches and DP ranks

`adv.response_mask` replaces the rollout mask from then on (it only differs for ERPD "ce", which trains on
positive responses only) and `adv.gradient_mask` goes into MicroBatch unchanged (Forking Tokens).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from policy_split_megatron.algorithms import covariance, entropy_baselines as eb, erpd
from policy_split_megatron.algorithms.advantages import broadcast_to_tokens, grpo_advantages
from policy_split_megatron.algorithms.aggregation import local_loss_denominator
from policy_split_megatron.algorithms.common import as_bool_mask, masked_mean
from policy_split_megatron.algorithms.config import AlgorithmConfig
from policy_split_megatron.algorithms.policy_split import inter_mode_kl, policy_split_advantages
from policy_split_megatron.algorithms.ppo import ppo_clip_loss, reference_kl_term

Tensor = torch.Tensor


@dataclass
class RolloutBatch:
    """A whole rollout batch (complete groups; for Policy Split, the quarter rows with their partners)."""

    rewards: Tensor  # [B]
    group_ids: Tensor  # [B] long
    response_mask: Tensor  # [B, T]
    old_log_probs: Tensor | None = None  # [B, T] pi_old (ERPD: the stored log-probs of the base)
    old_entropy: Tensor | None = None  # [B, T] full-vocabulary entropy under pi_old
    conditioning_mode: Tensor | None = None  # [B] Policy Split (QuarterBatch fields)
    source_mode: Tensor | None = None  # [B]
    partner_index: Tensor | None = None  # [B]
    teacher_log_probs: Tensor | Sequence[Tensor] | None = None  # ERPD stage 2: one [B, T] per teacher
    teacher_ref_log_probs: Tensor | Sequence[Tensor] | None = None  # ERPD "reference_corrected": each teacher's T0
    forking_threshold: float | Tensor | None = None  # Forking Tokens: a threshold computed elsewhere (global)


@dataclass
class AdvantageResult:
    advantages: Tensor  # [B, T] token-level, 0 on padding
    response_mask: Tensor  # [B, T] bool: the tokens of the loss AND of the denominator from now on
    gradient_mask: Tensor | None = None  # [B, T] bool: only these carry gradient (others still count)
    metrics: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class MicroBatch:
    log_probs: Tensor  # [b, T] current policy, with gradient
    old_log_probs: Tensor  # [b, T] pi_old (ERPD stage 2: the base; never re-anchored)
    advantages: Tensor  # [b, T] rows of AdvantageResult.advantages
    response_mask: Tensor  # [b, T] rows of AdvantageResult.response_mask
    gradient_mask: Tensor | None = None  # rows of AdvantageResult.gradient_mask
    entropy: Tensor | None = None  # [b, T] current full-vocabulary entropy (entropy_reg needs its gradient)
    ref_log_probs: Tensor | None = None  # [b, T] reference policy (ppo.kl_coef > 0; ERPD "mse" reference)


@dataclass(frozen=True)
class Requirements:
    """Which optional tensors the trainer must produce for this configuration."""

    old_entropy: bool = False  # RolloutBatch.old_entropy
    current_entropy: bool = False  # MicroBatch.entropy
    ref_log_probs: bool = False  # MicroBatch.ref_log_probs
    quarters: bool = False  # Policy Split rows (conditioning_mode, source_mode, partner_index)
    teacher_log_probs: bool = False  # RolloutBatch.teacher_log_probs
    centering_means: bool = False  # compute_loss(centering_means=...) from all-reduced stats


def requirements(cfg: AlgorithmConfig) -> Requirements:
    name = cfg.name
    return Requirements(
        old_entropy=name in ("entropy_driven_adv", "forking_tokens")
        or (name == "entropy_adv" and cfg.entropy_adv.entropy_source == "old")
        or (name == "policy_split" and cfg.policy_split.entropy_estimate == "entropy"),
        current_entropy=name == "entropy_reg"
        or (name == "entropy_adv" and cfg.entropy_adv.entropy_source == "current"),
        ref_log_probs=(name != "erpd" and cfg.ppo.kl_coef > 0),
        quarters=name == "policy_split",
        teacher_log_probs=name == "erpd" and cfg.erpd.stage == 2,
        centering_means=(name == "clip_cov" and cfg.clip_cov.centering == "global")
        or (name == "kl_cov" and cfg.kl_cov.centering == "global"),
    )


def _need(value, what: str, cfg: AlgorithmConfig):
    if value is None:
        raise ValueError(f"algorithm {cfg.name!r} needs {what}")
    return value


def compute_advantages(cfg: AlgorithmConfig, batch: RolloutBatch) -> AdvantageResult:
    """Token-level advantages (and masks) for a whole rollout batch."""
    mask = as_bool_mask(batch.response_mask)
    a = cfg.advantage
    seq_adv = grpo_advantages(batch.rewards, batch.group_ids, normalize_by_std=a.normalize_by_std,
                              std_unbiased=a.std_unbiased, eps=a.eps)
    adv = broadcast_to_tokens(seq_adv, mask)
    result = AdvantageResult(advantages=adv, response_mask=mask)
    name = cfg.name
    if name == "policy_split":
        ps = cfg.policy_split
        result.advantages, result.metrics = policy_split_advantages(
            batch.rewards, batch.group_ids, mask,
            _need(batch.conditioning_mode, "RolloutBatch.conditioning_mode (QuarterBatch)", cfg),
            _need(batch.partner_index, "RolloutBatch.partner_index (QuarterBatch)", cfg),
            old_log_probs=batch.old_log_probs, old_entropy=batch.old_entropy,
            eta=ps.eta, eta_normal=ps.eta_normal, kappa=ps.kappa, alpha=ps.alpha, clamp_order=ps.clamp_order,
            entropy_estimate=ps.entropy_estimate, zscore_unbiased=ps.zscore_unbiased, zscore_eps=ps.zscore_eps,
            normalize_by_std=a.normalize_by_std, adv_std_unbiased=a.std_unbiased, adv_eps=a.eps,
        )
        if batch.source_mode is not None and batch.old_log_probs is not None:
            result.metrics.update(inter_mode_kl(batch.old_log_probs, mask, batch.conditioning_mode,
                                                batch.source_mode, batch.partner_index,
                                                estimator=ps.kl_metric_estimator))
    elif name == "entropy_adv" and cfg.entropy_adv.entropy_source == "old":
        result.advantages = eb.entropy_shaped_advantages(
            adv, _need(batch.old_entropy, "RolloutBatch.old_entropy", cfg), mask,
            alpha=cfg.entropy_adv.alpha, kappa=cfg.entropy_adv.kappa)
    elif name == "entropy_driven_adv":
        eda, result.metrics = eb.entropy_driven_advantages(
            seq_adv, _need(batch.old_entropy, "RolloutBatch.old_entropy", cfg), mask, batch.group_ids,
            normalizer=cfg.entropy_driven_adv.normalizer, eps=cfg.entropy_driven_adv.eps)
        result.advantages = broadcast_to_tokens(eda, mask)
    elif name == "forking_tokens":
        result.gradient_mask, threshold = eb.forking_token_mask(
            _need(batch.old_entropy, "RolloutBatch.old_entropy", cfg), mask,
            top_fraction=cfg.forking_tokens.top_fraction, threshold=batch.forking_threshold)
        result.metrics = {"forking_threshold": threshold,
                          "forking_frac": masked_mean(result.gradient_mask.float(), mask)}
    elif name == "erpd":
        e = cfg.erpd
        if e.stage == 2:
            result.advantages = erpd.teacher_signal(
                _need(batch.teacher_log_probs, "RolloutBatch.teacher_log_probs", cfg),
                _need(batch.old_log_probs, "RolloutBatch.old_log_probs (the base)", cfg), mask,
                construction=e.signal, clip=e.signal_clip, scale=e.signal_scale,
                teacher_ref_log_probs=batch.teacher_ref_log_probs)
        elif e.stage1_objective == "ce":
            result.advantages, result.response_mask = erpd.stage1_ce_weights(
                batch.rewards, seq_adv, mask, reward_threshold=e.ce_reward_threshold,
                advantage_weighted=e.ce_advantage_weighted)
    result.metrics.setdefault("adv_mean", masked_mean(result.advantages, result.response_mask))
    return result


def loss_denominator(cfg: AlgorithmConfig, response_mask: Tensor) -> Tensor:
    """This micro-batch's contribution to the global loss denominator (all-reduce SUM over DP)."""
    return local_loss_denominator(response_mask, cfg.loss_agg_mode)


def compute_loss(
    cfg: AlgorithmConfig,
    mb: MicroBatch,
    *,
    global_denominator,
    step: int = 0,
    generator: torch.Generator | None = None,
    centering_means: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """(loss, metrics) of one micro-batch; `step` drives annealed coefficients, `generator` Clip-Cov."""
    name, p, agg = cfg.name, cfg.ppo, cfg.loss_agg_mode
    common = dict(global_denominator=global_denominator, agg_mode=agg)
    mask = as_bool_mask(mb.response_mask)
    if name == "erpd":
        return _erpd_loss(cfg, mb, mask, common)
    if name == "clip_cov":
        loss, metrics = covariance.clip_cov_loss(
            mb.log_probs, mb.old_log_probs, mb.advantages, mask, clip_eps_low=p.clip_eps_low,
            clip_eps_high=p.clip_eps_high, ratio=cfg.clip_cov.ratio, lb=cfg.clip_cov.lb, ub=cfg.clip_cov.ub,
            generator=generator, centering_means=_centering(cfg.clip_cov.centering, centering_means, cfg), **common)
    elif name == "kl_cov":
        loss, metrics = covariance.kl_cov_loss(
            mb.log_probs, mb.old_log_probs, mb.advantages, mask, ratio=cfg.kl_cov.ratio,
            beta=cfg.kl_cov.beta.value(step),
            centering_means=_centering(cfg.kl_cov.centering, centering_means, cfg), **common)
    else:
        advantages = mb.advantages
        if name == "entropy_adv" and cfg.entropy_adv.entropy_source == "current":
            advantages = eb.entropy_shaped_advantages(
                advantages, _need(mb.entropy, "MicroBatch.entropy", cfg), mask,
                alpha=cfg.entropy_adv.alpha, kappa=cfg.entropy_adv.kappa)
        loss, metrics = ppo_clip_loss(
            mb.log_probs, mb.old_log_probs, advantages, mask, clip_eps_low=p.clip_eps_low,
            clip_eps_high=p.clip_eps_high, dual_clip_c=p.dual_clip_c, gradient_mask=mb.gradient_mask, **common)
        if name == "entropy_reg":
            term, extra = eb.entropy_bonus_loss(_need(mb.entropy, "MicroBatch.entropy", cfg), mask,
                                                coef=cfg.entropy_reg.coef.value(step), **common)
            loss = loss + term
            metrics.update(extra)
    if p.kl_coef > 0:
        kl_loss, kl = reference_kl_term(mb.log_probs, _need(mb.ref_log_probs, "MicroBatch.ref_log_probs", cfg),
                                        mask, estimator=p.kl_estimator, **common)
        loss = loss + p.kl_coef * kl_loss
        metrics["ref_kl"] = masked_mean(kl.detach(), mask)
    if mb.entropy is not None:
        metrics.setdefault("entropy", masked_mean(mb.entropy.detach(), mask))
    return loss, metrics


def _centering(centering: str, means, cfg: AlgorithmConfig):
    if centering == "global":
        return _need(means, "centering_means (all-reduced covariance_centering_stats) for centering='global'", cfg)
    return None


def _erpd_loss(cfg: AlgorithmConfig, mb: MicroBatch, mask: Tensor, common: dict):
    e = cfg.erpd
    if e.stage == 2:
        loss, metrics = erpd.distill_loss(
            mb.log_probs, mb.old_log_probs, mb.advantages, mask, clip_eps_low=e.distill_clip_eps,
            clip_eps_high=e.distill_clip_eps, kl_coef=e.distill_kl_coef, kl_estimator=e.distill_kl_estimator,
            kl_drop_bound=e.kl_drop_bound, **common)
    elif e.stage1_objective == "pg":
        loss, metrics = ppo_clip_loss(mb.log_probs, mb.old_log_probs, mb.advantages, mask,
                                      clip_eps_low=e.stage1_clip_eps, clip_eps_high=e.stage1_clip_eps, **common)
    elif e.stage1_objective == "ce":
        loss, metrics = erpd.stage1_ce_loss(mb.log_probs, mb.advantages, mask, **common)
    else:
        # The reference of the log-ratio is the un-trained policy: its log-probs are the stored ones
        # unless the trainer passes another reference explicitly.
        ref = mb.ref_log_probs if mb.ref_log_probs is not None else mb.old_log_probs
        loss, metrics = erpd.stage1_mse_loss(mb.log_probs, ref, mb.advantages, mask,
                                             target_scale=e.mse_target_scale, **common)
    metrics.update({k: v for k, v in erpd.kl_to_base(mb.log_probs, mb.old_log_probs, mask).items()})
    return loss, metrics
