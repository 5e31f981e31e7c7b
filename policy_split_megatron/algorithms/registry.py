"""One call path for every algorithm: the trainer calls these four functions whatever `cfg.name` is.

    req = requirements(cfg)                                  # which optional tensors to compute
    adv = compute_advantages(cfg, RolloutBatch(...))         # once per rollout batch (whole groups)
    for each mini-batch:
        d = sum(loss_denominator(cfg, mb.response_mask) for mb in micro-batches); all_reduce(d, SUM, DP)
        for each micro-batch mb:
            loss, metrics = compute_loss(cfg, MicroBatch(...), global_denominator=d, step=step)
            loss.backward()                                  # grads SUMMED over micro-batches and DP ranks

`adv.response_mask` replaces the rollout mask from then on (it differs for ERPD "ce", which trains on
positive responses only, for DAPO's overlong filtering and for the "mask" rollout correction), and
`adv.gradient_mask` (Forking Tokens) and `adv.rollout_weights` (truncated importance sampling of the
rollout/trainer mismatch) go into MicroBatch row by row.

Global (data-parallel) statistics are computed by the trainer and passed in: the loss denominator, the
covariance centering means, the Forking-Tokens threshold (`entropy_baselines.global_forking_threshold`)
and EDGE's batch-mean entropy (`entropy_baselines.response_entropy_stats`). `requirements(cfg)` says which.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from policy_split_megatron.algorithms import covariance, dapo, entropy_baselines as eb, erpd, rollout_correction as rc
from policy_split_megatron.algorithms.advantages import broadcast_to_tokens, grpo_advantages
from policy_split_megatron.algorithms.aggregation import local_loss_denominator
from policy_split_megatron.algorithms.common import as_bool_mask, masked_mean
from policy_split_megatron.algorithms.config import AlgorithmConfig
from policy_split_megatron.algorithms.modes import HIGH_ENTROPY, NORMAL
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
    forking_threshold: float | Tensor | None = None  # Forking Tokens: eb.global_forking_threshold over all DP ranks
    batch_mean_entropy: float | Tensor | None = None  # EDGE "batch": eb.batch_mean_entropy_from_stats (all DP ranks)
    engine_log_probs: Tensor | None = None  # [B, T] the engine's log-prob of each sampled token (rollout correction)
    truncated: Tensor | None = None  # [B] bool: the engine stopped at its length limit (DAPO overlong filtering)
    max_response_length: int | Tensor | None = None  # L_max of the soft overlong penalty: int, or [B] per row


@dataclass
class AdvantageResult:
    advantages: Tensor  # [B, T] token-level, 0 on padding
    response_mask: Tensor  # [B, T] bool: the tokens of the loss AND of the denominator from now on
    gradient_mask: Tensor | None = None  # [B, T] bool: only these carry gradient (others still count)
    rollout_weights: Tensor | None = None  # [B, T] truncated IS weights of the rollout correction (None = 1)
    metrics: dict[str, Tensor] = field(default_factory=dict)
    # How many items each metric averages over (default: the response tokens), so that combining
    # ranks by these weights gives the whole-batch value (trainer/step.py)
    metric_weights: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class MicroBatch:
    log_probs: Tensor  # [b, T] current policy, with gradient
    old_log_probs: Tensor  # [b, T] pi_old (ERPD stage 2: the base; never re-anchored)
    advantages: Tensor  # [b, T] rows of AdvantageResult.advantages
    response_mask: Tensor  # [b, T] rows of AdvantageResult.response_mask
    gradient_mask: Tensor | None = None  # rows of AdvantageResult.gradient_mask
    entropy: Tensor | None = None  # [b, T] current full-vocabulary entropy (entropy_reg needs its gradient)
    ref_log_probs: Tensor | None = None  # [b, T] frozen reference (ppo.kl_coef > 0; ERPD stage-1 "mse" anchor)
    rollout_weights: Tensor | None = None  # rows of AdvantageResult.rollout_weights


@dataclass(frozen=True)
class Requirements:
    """Which optional tensors the trainer must produce for this configuration."""

    old_entropy: bool = False  # RolloutBatch.old_entropy
    current_entropy: bool = False  # MicroBatch.entropy
    ref_log_probs: bool = False  # MicroBatch.ref_log_probs (the frozen reference/base model's log-probs)
    quarters: bool = False  # Policy Split rows (conditioning_mode, source_mode, partner_index)
    teacher_log_probs: bool = False  # RolloutBatch.teacher_log_probs
    centering_means: bool = False  # compute_loss(centering_means=...) from all-reduced stats
    engine_log_probs: bool = False  # RolloutBatch.engine_log_probs (rollout correction)
    truncated: bool = False  # RolloutBatch.truncated (DAPO overlong filtering)
    max_response_length: bool = False  # RolloutBatch.max_response_length (DAPO soft overlong penalty)
    forking_threshold: bool = False  # RolloutBatch.forking_threshold from eb.global_forking_threshold (DP)
    batch_mean_entropy: bool = False  # RolloutBatch.batch_mean_entropy from all-reduced eb.response_entropy_stats
    dynamic_sampling: bool = False  # drop uniform-reward groups (dapo.dynamic_sampling_keep) and regenerate


def requirements(cfg: AlgorithmConfig) -> Requirements:
    name = cfg.name
    erpd_mse = name == "erpd" and cfg.erpd.stage == 1 and cfg.erpd.stage1_objective == "mse"
    return Requirements(
        old_entropy=name in ("entropy_driven_adv", "forking_tokens")
        or (name == "entropy_adv" and cfg.entropy_adv.entropy_source == "old")
        or (name == "policy_split" and cfg.policy_split.entropy_estimate == "entropy"),
        current_entropy=name == "entropy_reg"
        or (name == "entropy_adv" and cfg.entropy_adv.entropy_source == "current"),
        ref_log_probs=(name != "erpd" and cfg.ppo.kl_coef > 0) or erpd_mse,
        quarters=name == "policy_split",
        teacher_log_probs=name == "erpd" and cfg.erpd.stage == 2,
        centering_means=(name == "clip_cov" and cfg.clip_cov.centering == "global")
        or (name == "kl_cov" and cfg.kl_cov.centering == "global"),
        engine_log_probs=cfg.rollout_correction.enabled,
        truncated=cfg.dapo.overlong_filtering,
        max_response_length=cfg.dapo.overlong_buffer > 0,
        forking_threshold=name == "forking_tokens",
        batch_mean_entropy=name == "entropy_driven_adv" and cfg.entropy_driven_adv.normalizer == "batch",
        dynamic_sampling=cfg.dapo.dynamic_sampling,
    )


def _need(value, what: str, cfg: AlgorithmConfig):
    if value is None:
        raise ValueError(f"algorithm {cfg.name!r} needs {what}")
    return value


def compute_advantages(cfg: AlgorithmConfig, batch: RolloutBatch) -> AdvantageResult:
    """Token-level advantages (and masks) for a whole rollout batch."""
    mask = as_bool_mask(batch.response_mask)
    a = cfg.advantage
    rewards, shaping_metrics = _shaped_rewards(cfg, batch, mask)
    seq_adv = grpo_advantages(rewards, batch.group_ids, normalize_by_std=a.normalize_by_std,
                              std_unbiased=a.std_unbiased, eps=a.eps, estimator=a.estimator)
    adv = broadcast_to_tokens(seq_adv, mask)
    result = AdvantageResult(advantages=adv, response_mask=mask)
    name = cfg.name
    if name == "policy_split":
        ps = cfg.policy_split
        result.advantages, result.metrics = policy_split_advantages(
            rewards, batch.group_ids, mask,
            _need(batch.conditioning_mode, "RolloutBatch.conditioning_mode (QuarterBatch)", cfg),
            _need(batch.partner_index, "RolloutBatch.partner_index (QuarterBatch)", cfg),
            old_log_probs=batch.old_log_probs, old_entropy=batch.old_entropy,
            eta=ps.eta, eta_normal=ps.eta_normal, kappa=ps.kappa, alpha=ps.alpha, clamp_order=ps.clamp_order,
            entropy_estimate=ps.entropy_estimate, zscore_unbiased=ps.zscore_unbiased, zscore_eps=ps.zscore_eps,
            normalize_by_std=a.normalize_by_std, adv_std_unbiased=a.std_unbiased, adv_eps=a.eps,
            adv_estimator=a.estimator,
        )
        he_tokens = (mask & (batch.conditioning_mode == HIGH_ENTROPY).unsqueeze(-1)).sum()
        normal_tokens = mask.sum() - he_tokens
        result.metric_weights.update({k: he_tokens for k in result.metrics if k.startswith("he_")})
        result.metric_weights["normal_bonus_mean"] = normal_tokens
        if batch.source_mode is not None and batch.old_log_probs is not None:
            result.metrics.update(inter_mode_kl(batch.old_log_probs, mask, batch.conditioning_mode,
                                                batch.source_mode, batch.partner_index,
                                                estimator=ps.kl_metric_estimator))
            own = batch.conditioning_mode == batch.source_mode
            # sequence means over each mode's own rollouts (inter_mode_kl)
            result.metric_weights["kl_normal_he"] = (own & (batch.source_mode == NORMAL)).sum()
            result.metric_weights["kl_he_normal"] = (own & (batch.source_mode == HIGH_ENTROPY)).sum()
    elif name == "entropy_adv" and cfg.entropy_adv.entropy_source == "old":
        result.advantages = eb.entropy_shaped_advantages(
            adv, _need(batch.old_entropy, "RolloutBatch.old_entropy", cfg), mask,
            alpha=cfg.entropy_adv.alpha, kappa=cfg.entropy_adv.kappa)
    elif name == "entropy_driven_adv":
        eda, result.metrics = eb.entropy_driven_advantages(
            seq_adv, _need(batch.old_entropy, "RolloutBatch.old_entropy", cfg), mask, batch.group_ids,
            normalizer=cfg.entropy_driven_adv.normalizer, eps=cfg.entropy_driven_adv.eps,
            batch_mean_entropy=batch.batch_mean_entropy)
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
                rewards, seq_adv, mask, reward_threshold=e.ce_reward_threshold,
                advantage_weighted=e.ce_advantage_weighted)
    result.metrics.update(shaping_metrics)
    if cfg.dapo.overlong_filtering:
        truncated = _need(batch.truncated, "RolloutBatch.truncated (dapo.overlong_filtering)", cfg)
        result.response_mask = dapo.overlong_filter_mask(result.response_mask, truncated)
        result.metrics["dapo/overlong_filtered_frac"] = truncated.float().mean()
        result.metric_weights["dapo/overlong_filtered_frac"] = torch.tensor(truncated.numel())
    if cfg.rollout_correction.enabled:
        _correct_rollout(cfg, batch, mask, result)
    result.metrics.setdefault("adv_mean", masked_mean(result.advantages, result.response_mask))
    return result


def _shaped_rewards(cfg: AlgorithmConfig, batch: RolloutBatch, mask: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """The rewards the advantage sees: the task rewards plus DAPO's soft overlong penalty (Eq. 13) when on."""
    if cfg.dapo.overlong_buffer == 0:
        return batch.rewards, {}
    limit = _need(batch.max_response_length, "RolloutBatch.max_response_length (dapo.overlong_buffer > 0)", cfg)
    penalty = dapo.soft_overlong_penalty(mask.sum(-1), limit, cfg.dapo.overlong_buffer,
                                         penalty_factor=cfg.dapo.overlong_penalty_factor).to(batch.rewards.device)
    return batch.rewards + penalty, {"dapo/overlong_penalty_mean": penalty.mean(),
                                     "dapo/overlong_penalized_frac": (penalty < 0).float().mean()}


def _correct_rollout(cfg: AlgorithmConfig, batch: RolloutBatch, mask: Tensor, result: AdvantageResult) -> None:
    """Rollout/trainer mismatch (rollout_correction.py): weights (truncate) or a smaller loss mask (mask)."""
    c = cfg.rollout_correction
    engine = _need(batch.engine_log_probs, "RolloutBatch.engine_log_probs (rollout_correction.enabled)", cfg)
    old = _need(batch.old_log_probs, "RolloutBatch.old_log_probs (rollout correction)", cfg)
    behaviour = rc.source_conditioned_log_probs(old, mask, batch.conditioning_mode, batch.source_mode,
                                                batch.partner_index)
    weights, kept, metrics = rc.correction_weights(behaviour, engine, mask, level=c.level, mode=c.mode,
                                                   cap=c.cap, lower=c.lower, upper=c.upper)
    result.metrics.update(metrics)
    if c.mode == "truncate":
        result.rollout_weights = weights
    else:
        result.response_mask = result.response_mask & kept


def loss_denominator(cfg: AlgorithmConfig, response_mask: Tensor) -> Tensor:
    """This micro-batch's contribution to the global loss denominator (all-reduce SUM over DP)."""
    return local_loss_denominator(response_mask, cfg.loss_agg_mode, cfg.loss_norm_length)


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
    weight = mb.rollout_weights  # rollout correction: multiplies the policy-gradient term of every loss
    if name == "clip_cov":
        loss, metrics = covariance.clip_cov_loss(
            mb.log_probs, mb.old_log_probs, mb.advantages, mask, clip_eps_low=p.clip_eps_low,
            clip_eps_high=p.clip_eps_high, ratio=cfg.clip_cov.ratio, lb=cfg.clip_cov.lb, ub=cfg.clip_cov.ub,
            generator=generator, centering_means=_centering(cfg.clip_cov.centering, centering_means, cfg),
            pg_weight=weight, **common)
    elif name == "kl_cov":
        loss, metrics = covariance.kl_cov_loss(
            mb.log_probs, mb.old_log_probs, mb.advantages, mask, ratio=cfg.kl_cov.ratio,
            beta=cfg.kl_cov.beta.value(step),
            centering_means=_centering(cfg.kl_cov.centering, centering_means, cfg), pg_weight=weight, **common)
    else:
        advantages = mb.advantages
        if name == "entropy_adv" and cfg.entropy_adv.entropy_source == "current":
            advantages = eb.entropy_shaped_advantages(
                advantages, _need(mb.entropy, "MicroBatch.entropy", cfg), mask,
                alpha=cfg.entropy_adv.alpha, kappa=cfg.entropy_adv.kappa)
        loss, metrics = ppo_clip_loss(
            mb.log_probs, mb.old_log_probs, advantages, mask, clip_eps_low=p.clip_eps_low,
            clip_eps_high=p.clip_eps_high, dual_clip_c=p.dual_clip_c, gradient_mask=mb.gradient_mask,
            ratio_level=p.ratio_level, pg_weight=weight, **common)
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
        # The anchor of the log-ratio is the FROZEN base (the un-trained policy), never pi_old: pi_old moves
        # with every step, so anchoring on it would regress each step's log-ratio to s*A anew.
        ref = _need(mb.ref_log_probs, "MicroBatch.ref_log_probs (the frozen base) for stage1_objective='mse'", cfg)
        loss, metrics = erpd.stage1_mse_loss(mb.log_probs, ref, mb.advantages, mask,
                                             target_scale=e.mse_target_scale, **common)
    # KL to the base: stage 2's pi_old IS the base; stage-1 "mse" has the base as its reference; otherwise the
    # base is not scored and the stored pi_old stands in for it.
    base = mb.ref_log_probs if mb.ref_log_probs is not None else mb.old_log_probs
    metrics.update(erpd.kl_to_base(mb.log_probs, base, mask))
    return loss, metrics
