"""Rollout/trainer mismatch correction: hand-computed weights and masks, Policy Split's behaviour
probability for Q3/Q4, exactness when the engine agrees with the trainer, and a perturbed engine
log-prob that changes the loss (and gradient) by the hand-computed amount."""

import math

import pytest
import torch

from policy_split_megatron.algorithms import (
    AlgorithmConfig,
    MicroBatch,
    RolloutBatch,
    compute_advantages,
    compute_loss,
    loss_denominator,
    requirements,
)
from policy_split_megatron.algorithms import rollout_correction as rc
from policy_split_megatron.algorithms.config import (
    ClipCovConfig,
    KLCovConfig,
    PPOConfig,
    RolloutCorrectionConfig,
    config_from_dict,
)
from policy_split_megatron.algorithms.modes import HIGH_ENTROPY as HE
from policy_split_megatron.algorithms.modes import NORMAL as N
from policy_split_megatron.algorithms.policy_split import RolloutSample, build_quarters

OLD = torch.tensor([[-1.0, -2.0, -0.5, float("-inf")]])  # last position is padding
ENGINE = torch.tensor([[-1.2, -1.0, -0.5, 0.0]])  # delta = old - engine = [0.2, -1.0, 0.0]
MASK = torch.tensor([[True, True, True, False]])


def test_token_truncate_weights_by_hand():
    w, kept, _ = rc.correction_weights(OLD, ENGINE, MASK, level="token", mode="truncate", cap=1.2)
    torch.testing.assert_close(w[0, :3], torch.tensor([1.2, math.exp(-1.0), 1.0]))  # min(e^0.2 = 1.221, 1.2)
    assert w[0, 3].item() == 1.0 and torch.equal(kept, MASK)


def test_sequence_truncate_weight_is_the_product_of_token_ratios():
    w, _, _ = rc.correction_weights(OLD, ENGINE, MASK, level="sequence", mode="truncate", cap=2.0)
    torch.testing.assert_close(w[0, :3], torch.full((3,), math.exp(0.2 - 1.0)))  # exp(sum delta) = 0.449
    w, _, _ = rc.correction_weights(OLD, ENGINE - 1.0, MASK, level="sequence", cap=2.0)  # exp(2.2) > 2: capped
    torch.testing.assert_close(w[0, :3], torch.full((3,), 2.0))


def test_masks_by_hand():
    _, kept, m = rc.correction_weights(OLD, ENGINE, MASK, level="token", mode="mask", lower=0.5, upper=2.0)
    assert kept.tolist() == [[True, False, True, False]]  # e^-1 = 0.368 < 0.5
    assert m["rollout_corr/masked_frac"].item() == pytest.approx(1 / 3)
    _, kept, _ = rc.correction_weights(OLD, ENGINE, MASK, level="sequence", mode="mask", lower=0.5, upper=2.0)
    assert not kept.any()  # exp(-0.8) = 0.449 < 0.5: the whole response goes
    w, kept, _ = rc.correction_weights(OLD, ENGINE, MASK, level="geometric", mode="mask", lower=0.5, upper=2.0)
    assert torch.equal(kept, MASK) and torch.equal(w, torch.ones_like(w))  # exp(-0.8 / 3) = 0.766: kept
    with pytest.raises(ValueError, match="geometric"):
        rc.correction_weights(OLD, ENGINE, MASK, level="geometric", mode="truncate")


def test_mismatch_metrics_by_hand_and_two_halves_reduce_to_the_whole():
    old = torch.tensor([[-1.0, -2.0, -0.5], [-0.1, -3.0, -9.0]])
    engine = torch.tensor([[-1.2, -1.0, -0.5], [-0.7, -3.0, 0.0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])  # deltas 0.2, -1.0, 0.0, 0.6
    sums, top = rc.mismatch_stats(old, engine, mask)
    metrics = rc.mismatch_metrics_from_stats(sums, top)
    k3 = sum(math.exp(d) - 1 - d for d in (0.2, -1.0, 0.0, 0.6)) / 4
    assert metrics["abs_log_ratio_mean"] == pytest.approx(1.8 / 4)
    assert metrics["kl_k3"] == pytest.approx(k3)
    assert metrics["frac_abs_log_ratio_gt_0.5"] == pytest.approx(2 / 4)
    assert metrics["abs_log_ratio_max"] == pytest.approx(1.0)
    (s0, t0), (s1, t1) = (rc.mismatch_stats(old[i:i + 1], engine[i:i + 1], mask[i:i + 1]) for i in (0, 1))
    assert rc.mismatch_metrics_from_stats(s0 + s1, torch.maximum(t0, t1)) == pytest.approx(metrics)


# -- Policy Split: which behaviour probability Q3/Q4 use -------------------------------------------

def _quarters():
    samples = [RolloutSample(0, N, [5, 6, 7], 1.0), RolloutSample(0, HE, [8, 9], 0.0),
               RolloutSample(0, N, [4, 7], 0.0), RolloutSample(0, HE, [3, 3, 7], 1.0)]
    return build_quarters([[1, 2]], [[1, 1, 1, 2]], samples, pad_token_id=0)  # prompts of different lengths


def test_cross_conditioned_rows_use_the_source_conditioning_ratio():
    qb = _quarters()
    g = torch.Generator().manual_seed(0)
    old = -torch.rand(qb.input_ids.shape, generator=g) - 0.1
    engine_per_sample = [[-0.4, -0.5, -0.6], [-0.2, -0.3], [-1.0, -1.1], [-0.7, -0.8, -0.9]]
    engine = rc.scatter_sample_values(engine_per_sample, qb.response_mask, qb.sample_index)
    behaviour = rc.source_conditioned_log_probs(old, qb.response_mask, qb.conditioning_mode, qb.source_mode,
                                                qb.partner_index)
    w, _, _ = rc.correction_weights(behaviour, engine, qb.response_mask, cap=10.0)
    m = qb.response_mask
    for row in range(len(qb)):
        source_row = row if qb.conditioning_mode[row] == qb.source_mode[row] else int(qb.partner_index[row])
        expected = torch.exp(old[source_row][m[source_row]] - torch.tensor(engine_per_sample[qb.sample_index[row]]))
        torch.testing.assert_close(w[row][m[row]], expected)  # Q3 row = its Q2 partner's ratio, Q4 = Q1's
        assert qb.quarter[row] in (1, 2) or not torch.allclose(  # and NOT the cross-conditioned pi_old
            w[row][m[row]], torch.exp(old[row][m[row]] - torch.tensor(engine_per_sample[qb.sample_index[row]])))


def test_scatter_refuses_a_wrong_number_of_engine_log_probs():
    qb = _quarters()
    with pytest.raises(ValueError, match="one log-prob per sampled token"):
        rc.scatter_sample_values([[0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0, 0.0]], qb.response_mask, qb.sample_index)


def test_mismatch_stats_by_mode_reads_own_conditioning_rows_only():
    qb = _quarters()
    old = torch.zeros(qb.input_ids.shape)
    engine = torch.where(qb.response_mask & (qb.source_mode == HE).unsqueeze(-1), -0.25, 0.0)
    engine[qb.quarter == 3] = 5.0  # Q3 rows (HE responses under the normal prompt) must not be read
    stats = rc.mismatch_stats_by_mode(old, engine, qb.response_mask, qb.conditioning_mode, qb.source_mode)
    normal = rc.mismatch_metrics_from_stats(*stats["normal"])
    he = rc.mismatch_metrics_from_stats(*stats["high_entropy"])
    assert normal["abs_log_ratio_mean"] == 0.0 and he["abs_log_ratio_mean"] == pytest.approx(0.25)
    assert stats["high_entropy"][0][3].item() == 5  # the tokens of the two HE responses under their own prompt


# -- through the registry: exactness and a hand-computed perturbation -------------------------------

def _rollout(policy_split: bool):
    qb = _quarters()
    g = torch.Generator().manual_seed(1)
    old = -torch.rand(qb.input_ids.shape, generator=g) - 0.1
    keep = torch.arange(len(qb)) if policy_split else torch.nonzero(qb.conditioning_mode == N).squeeze(-1)
    qb, old = qb.select(keep), old[keep]
    extra = dict(conditioning_mode=qb.conditioning_mode, source_mode=qb.source_mode,
                 partner_index=qb.partner_index) if policy_split else {}
    batch = RolloutBatch(rewards=qb.rewards, group_ids=qb.group_ids, response_mask=qb.response_mask,
                         old_log_probs=old, **extra)
    lp = (old + 0.05 * torch.randn(old.shape, generator=g)).requires_grad_(True)
    return batch, lp


def _loss_and_grad(cfg, batch, lp):
    adv = compute_advantages(cfg, batch)
    lp = lp.detach().clone().requires_grad_(True)
    mb = MicroBatch(log_probs=lp, old_log_probs=batch.old_log_probs, advantages=adv.advantages,
                    response_mask=adv.response_mask, gradient_mask=adv.gradient_mask,
                    rollout_weights=adv.rollout_weights)
    loss, _ = compute_loss(cfg, mb, global_denominator=loss_denominator(cfg, adv.response_mask),
                           generator=torch.Generator().manual_seed(3))
    loss.backward()
    return loss.detach(), lp.grad, adv


def _engine_agreeing_with_trainer(batch):
    """What an engine that matches the trainer returns: per response, pi_old under its SOURCE mode, on every
    row of that response (the Q3/Q4 rows carry their sample's engine log-probs, not their own pi_old)."""
    return rc.source_conditioned_log_probs(batch.old_log_probs, batch.response_mask, batch.conditioning_mode,
                                           batch.source_mode, batch.partner_index).clone()


CONFIGS = {
    "grpo": dict(name="grpo"),
    "policy_split": dict(name="policy_split", policy_split={"kappa": 0.0}),
    "clip_cov": dict(name="clip_cov", clip_cov={"ratio": 0.2, "lb": -100.0, "ub": 100.0}),
    "kl_cov": dict(name="kl_cov", kl_cov={"ratio": 0.2}),
    "gspo": dict(name="grpo", loss_agg_mode="seq-mean-token-mean", ppo={"ratio_level": "sequence"}),
}


@pytest.mark.parametrize("level,mode", [("token", "truncate"), ("sequence", "truncate"), ("token", "mask"),
                                        ("geometric", "mask")])
@pytest.mark.parametrize("algo", sorted(CONFIGS))
def test_engine_equal_to_trainer_gives_exactly_the_uncorrected_update(algo, level, mode):
    base = CONFIGS[algo]
    batch, lp = _rollout(policy_split=algo == "policy_split")
    off = config_from_dict(AlgorithmConfig, base)
    on = config_from_dict(AlgorithmConfig, {**base, "rollout_correction": {"enabled": True, "level": level,
                                                                            "mode": mode}})
    assert requirements(on).engine_log_probs and not requirements(off).engine_log_probs
    with pytest.raises(ValueError, match="engine_log_probs"):
        compute_advantages(on, batch)
    loss_off, grad_off, _ = _loss_and_grad(off, batch, lp)
    batch.engine_log_probs = _engine_agreeing_with_trainer(batch)
    loss_on, grad_on, _ = _loss_and_grad(on, batch, lp)
    assert torch.equal(loss_on, loss_off) and torch.equal(grad_on, grad_off)


def test_a_perturbed_engine_log_prob_changes_the_loss_by_the_hand_computed_amount():
    batch, lp = _rollout(policy_split=False)
    cfg = AlgorithmConfig(name="grpo", ppo=PPOConfig(clip_eps_low=0.2, clip_eps_high=0.2),
                          rollout_correction=RolloutCorrectionConfig(enabled=True, cap=2.0))
    row, col = 0, int(torch.nonzero(batch.response_mask[0])[1])  # second response token of row 0
    lp_at_old = batch.old_log_probs.clone()  # ratio 1: each token's loss is exactly -A
    batch.engine_log_probs = batch.old_log_probs.clone()
    loss0, grad0, adv = _loss_and_grad(cfg, batch, lp_at_old)
    batch.engine_log_probs[row, col] -= math.log(1.5)  # the engine thought the token less likely: rho = 1.5
    loss1, grad1, _ = _loss_and_grad(cfg, batch, lp_at_old)
    n = batch.response_mask.sum()
    a = adv.advantages[row, col]
    assert (loss1 - loss0).item() == pytest.approx((0.5 * -a / n).item(), rel=1e-5)
    expected_grad = grad0.clone()
    expected_grad[row, col] *= 1.5
    torch.testing.assert_close(grad1, expected_grad)
    batch.engine_log_probs[row, col] -= math.log(4.0)  # rho = 6 > C: truncated at 2
    loss2, _, _ = _loss_and_grad(cfg, batch, lp_at_old)
    assert (loss2 - loss0).item() == pytest.approx((1.0 * -a / n).item(), rel=1e-5)


def test_mask_mode_removes_the_rejected_tokens_from_the_loss_and_its_denominator():
    batch, lp = _rollout(policy_split=True)
    cfg = AlgorithmConfig(name="policy_split", rollout_correction=RolloutCorrectionConfig(
        enabled=True, mode="mask", level="sequence"))
    batch.engine_log_probs = _engine_agreeing_with_trainer(batch)
    rejected_sample = 1  # its engine log-probs (under its source mode) are far from the trainer's
    rows = torch.nonzero(torch.tensor([s == rejected_sample for s in range(4)] * 2)).squeeze(-1)
    for r in rows:  # the engine's log-probs of that response, on both of its rows
        batch.engine_log_probs[r][batch.response_mask[r]] += 3.0
    adv = compute_advantages(cfg, batch)
    assert not adv.response_mask[rows].any()  # both of its rows go (Q2 and its Q3 partner)
    assert torch.equal(adv.response_mask[~torch.isin(torch.arange(8), rows)],
                       batch.response_mask[~torch.isin(torch.arange(8), rows)])
    assert loss_denominator(cfg, adv.response_mask) == batch.response_mask.sum() - batch.response_mask[rows].sum()


def test_rollout_correction_config_is_validated():
    with pytest.raises(ValueError, match="rollout_correction.level must be one of"):
        RolloutCorrectionConfig(level="prefix")
    with pytest.raises(ValueError, match="rollout_correction.cap must be >= 1"):
        RolloutCorrectionConfig(cap=0.5)
    with pytest.raises(ValueError, match="use mode='mask'"):
        RolloutCorrectionConfig(level="geometric")
    with pytest.raises(ValueError, match="rollout_correction cannot be combined with erpd"):
        AlgorithmConfig(name="erpd", rollout_correction=RolloutCorrectionConfig(enabled=True))
    assert not AlgorithmConfig().rollout_correction.enabled  # off by default
    # the other algorithms accept it
    for name, extra in (("clip_cov", dict(clip_cov=ClipCovConfig())), ("kl_cov", dict(kl_cov=KLCovConfig()))):
        AlgorithmConfig(name=name, rollout_correction=RolloutCorrectionConfig(enabled=True), **extra)
