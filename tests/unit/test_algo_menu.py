"""The peers' algorithm menu as config choices, each against a hand-computed case: DAPO (dynamic-sampling
filter, overlong filtering, soft overlong penalty), Dr. GRPO, RLOO, GSPO, and the refused combinations."""

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
from policy_split_megatron.algorithms.advantages import grpo_advantages
from policy_split_megatron.algorithms.config import DAPOConfig, ERPDConfig, PPOConfig, config_from_dict
from policy_split_megatron.algorithms.dapo import dynamic_sampling_keep, soft_overlong_penalty
from policy_split_megatron.algorithms.policy_split import policy_split_advantages
from policy_split_megatron.algorithms.ppo import clipped_surrogate

# -- RLOO --------------------------------------------------------------------------------------------


def test_rloo_baseline_is_the_mean_of_the_other_responses():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 2.0, 3.0])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 2])  # group 2 is a singleton: no other response, A = 0
    a = grpo_advantages(rewards, groups, estimator="rloo", normalize_by_std=False)
    torch.testing.assert_close(a, torch.tensor([1 - 1 / 3, 0 - 2 / 3, 0 - 2 / 3, 1 - 1 / 3, 0.5 - 2.0, 2.0 - 0.5, 0.0]))
    std = torch.tensor([1.0, 0.0, 0.0, 1.0]).std()  # normalize_by_std: divided by the (unbiased) group std + eps
    a = grpo_advantages(rewards[:4], groups[:4], estimator="rloo")
    torch.testing.assert_close(a, torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3]) / (std + 1e-6))
    with pytest.raises(ValueError, match="estimator must be one of"):
        grpo_advantages(rewards, groups, estimator="vinepo")


def test_policy_split_with_rloo_uses_the_leave_one_out_a_over_the_joint_group():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])  # 4 responses under each conditioning
    mask = torch.ones(8, 3, dtype=torch.bool)
    cond = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    partner = torch.tensor([4, 5, 6, 7, 0, 1, 2, 3])
    adv, _ = policy_split_advantages(rewards, groups, mask, cond, partner, eta=0.0, normalize_by_std=False,
                                     adv_estimator="rloo")
    torch.testing.assert_close(adv[:, 0], torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3] * 2))


# -- Dr. GRPO ----------------------------------------------------------------------------------------


def test_dr_grpo_no_std_and_a_constant_length_normaliser():
    cfg = config_from_dict(AlgorithmConfig, {"name": "grpo", "advantage": {"normalize_by_std": False},
                                             "loss_agg_mode": "seq-mean-token-sum-norm", "loss_norm_length": 10})
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0])
    mask = torch.arange(4).unsqueeze(0) < torch.tensor([4, 2, 1, 3]).unsqueeze(1)
    batch = RolloutBatch(rewards=rewards, group_ids=torch.zeros(4, dtype=torch.long), response_mask=mask,
                         old_log_probs=torch.zeros(4, 4))
    adv = compute_advantages(cfg, batch)
    torch.testing.assert_close(adv.advantages[:, 0], torch.tensor([0.75, -0.25, -0.25, -0.25]))  # r - mean
    lp = torch.zeros(4, 4, requires_grad=True)  # ratio 1: each token's loss is -A
    d = loss_denominator(cfg, adv.response_mask)
    assert d.item() == 4 * 10  # 4 sequences x L
    loss, _ = compute_loss(cfg, MicroBatch(lp, batch.old_log_probs, adv.advantages, adv.response_mask),
                           global_denominator=d)
    # (1/G) sum_i sum_t -A_i / L = -(0.75*4 - 0.25*2 - 0.25*1 - 0.25*3) / (4 * 10)
    assert loss.item() == pytest.approx(-(3.0 - 0.5 - 0.25 - 0.75) / 40)
    loss.backward()  # every token of every length has the same gradient magnitude |A| / (G L)
    assert lp.grad[0, 0].item() == pytest.approx(-0.75 / 40) and lp.grad[3, 2].item() == pytest.approx(0.25 / 40)
    with pytest.raises(ValueError, match="loss_norm_length must be a positive int"):
        AlgorithmConfig(loss_agg_mode="seq-mean-token-sum-norm")


# -- GSPO --------------------------------------------------------------------------------------------


def _gspo_case():
    old = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.7, 0.0]])
    lp = (old + torch.tensor([[0.1, 0.3, 0.2], [-0.2, 0.0, 9.0]])).requires_grad_(True)  # row 1: 2 tokens
    mask = torch.tensor([[True, True, True], [True, True, False]])
    return old, lp, mask


def test_gspo_ratio_is_the_exp_of_the_mean_token_log_ratio_with_a_per_token_gradient():
    old, lp, mask = _gspo_case()
    adv = torch.tensor([1.0, -1.0])
    terms = clipped_surrogate(lp, old, adv, clip_eps_low=None, clip_eps_high=None, ratio_level="sequence",
                              response_mask=mask)
    s0, s1 = math.exp(0.6 / 3), math.exp(-0.2 / 2)
    torch.testing.assert_close(terms.ratio[mask], torch.tensor([s0] * 3 + [s1] * 2))
    loss = (terms.loss * mask).sum()
    loss.backward()
    # d(-A s_i)/d log pi_t = -A s_i for every token t of response i (GSPO-token, §4.3)
    torch.testing.assert_close(lp.grad[mask], torch.tensor([-s0] * 3 + [s1] * 2))
    assert lp.grad[1, 2].item() == 0.0  # padding (whose log-ratio of 9 is not in the mean) has no gradient


def test_gspo_clips_whole_sequences_and_equals_the_gspo_objective():
    old, lp, mask = _gspo_case()
    cfg = AlgorithmConfig(name="grpo", loss_agg_mode="seq-mean-token-mean",
                          ppo=PPOConfig(clip_eps_low=3e-4, clip_eps_high=4e-4, ratio_level="sequence"))
    adv = torch.tensor([[1.0] * 3, [-1.0] * 3]) * mask
    loss, m = compute_loss(cfg, MicroBatch(lp, old, adv, mask), global_denominator=2)
    s0, s1 = math.exp(0.2), math.exp(-0.1)
    # J_GSPO = (1/G) sum_i min(s_i A_i, clip(s_i) A_i): row 0 (A>0, s>1+eps) clipped to 1+4e-4; row 1 (A<0,
    # s<1-eps) clipped to 1-3e-4 since -A*clip > -A*s is the max
    expected = -((1 + 4e-4) * 1.0 + min(s1 * -1.0, (1 - 3e-4) * -1.0)) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-7)  # float32 ratios
    assert m["pg_clipfrac"].item() == 1.0
    loss.backward()
    assert torch.count_nonzero(lp.grad) == 0  # both sequences clipped as a whole: no token keeps a gradient
    assert s0 > 1 + 4e-4


def test_gspo_with_token_level_advantages_of_policy_split():
    # Policy Split's Ã differs per token; the GSPO-token form weighs token t by A_t * s_i
    old, lp, mask = _gspo_case()
    adv = torch.tensor([[1.0, 2.0, 3.0], [0.5, -0.5, 0.0]])
    terms = clipped_surrogate(lp, old, adv, clip_eps_low=None, clip_eps_high=None, ratio_level="sequence",
                              response_mask=mask)
    (terms.loss * mask).sum().backward()
    s0, s1 = math.exp(0.2), math.exp(-0.1)
    torch.testing.assert_close(lp.grad[mask], torch.tensor([-s0, -2 * s0, -3 * s0, -0.5 * s1, 0.5 * s1]))
    cfg = AlgorithmConfig(name="policy_split", loss_agg_mode="seq-mean-token-mean",
                          ppo=PPOConfig(ratio_level="sequence"))  # accepted: Policy Split + GSPO
    assert requirements(cfg).quarters


# -- DAPO --------------------------------------------------------------------------------------------


def test_soft_overlong_penalty_by_hand():
    lengths = torch.tensor([5, 6, 7, 8, 10, 12])  # L_max = 10, L_cache = 4: the buffer is (6, 10]
    torch.testing.assert_close(soft_overlong_penalty(lengths, 10, 4),
                               torch.tensor([0.0, 0.0, -0.25, -0.5, -1.0, -1.0]))
    torch.testing.assert_close(soft_overlong_penalty(lengths, 10, 4, penalty_factor=0.5),
                               torch.tensor([0.0, 0.0, -0.125, -0.25, -0.5, -0.5]))
    per_row = soft_overlong_penalty(torch.tensor([7, 7]), torch.tensor([10, 8]), 4)  # a limit per mode
    torch.testing.assert_close(per_row, torch.tensor([-0.25, -0.75]))
    with pytest.raises(ValueError, match="shorter than the generation limit"):
        soft_overlong_penalty(lengths, 4, 4)


def test_dynamic_sampling_drops_uniform_reward_groups():
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.3, 0.31])
    groups = torch.tensor([7, 7, 7, 3, 3, 3, 5, 5, 9, 4, 4])  # 7 all 1, 5 all 0, 9 a singleton
    keep, kept = dynamic_sampling_keep(rewards, groups)
    assert keep.tolist() == [False] * 3 + [True] * 3 + [False] * 3 + [True] * 2
    assert kept.tolist() == [3, 4]
    keep, kept = dynamic_sampling_keep(rewards, groups, tolerance=0.05)  # 0.30 vs 0.31 counts as equal
    assert kept.tolist() == [3]
    assert requirements(AlgorithmConfig(dapo=DAPOConfig(dynamic_sampling=True))).dynamic_sampling


def _dapo_batch():
    mask = torch.arange(6).unsqueeze(0) < torch.tensor([6, 3, 5, 2]).unsqueeze(1)
    return RolloutBatch(rewards=torch.tensor([1.0, 1.0, 0.0, 0.0]), group_ids=torch.zeros(4, dtype=torch.long),
                        response_mask=mask, old_log_probs=torch.zeros(4, 6),
                        truncated=torch.tensor([True, False, False, False]), max_response_length=6)


def test_overlong_filtering_and_penalty_through_the_registry():
    batch = _dapo_batch()
    cfg = AlgorithmConfig(name="grpo", dapo=DAPOConfig(overlong_filtering=True, overlong_buffer=2))
    need = requirements(cfg)
    assert need.truncated and need.max_response_length
    adv = compute_advantages(cfg, batch)
    # penalties (L_max 6, L_cache 2): lengths 6, 3, 5, 2 -> -1, 0, -0.5, 0; shaped rewards 0, 1, -0.5, 0
    shaped = torch.tensor([0.0, 1.0, -0.5, 0.0])
    expected = (shaped - shaped.mean()) / (shaped.std() + 1e-6)
    torch.testing.assert_close(adv.advantages[:, 0], expected)
    # the truncated row keeps its place in the group statistics but leaves the loss and the denominator
    assert not adv.response_mask[0].any() and torch.equal(adv.response_mask[1:], batch.response_mask[1:])
    assert loss_denominator(cfg, adv.response_mask).item() == 3 + 5 + 2
    batch.truncated = None
    with pytest.raises(ValueError, match="RolloutBatch.truncated"):
        compute_advantages(cfg, batch)


# -- combinations ------------------------------------------------------------------------------------


@pytest.mark.parametrize("settings,message", [
    ({"name": "clip_cov", "loss_agg_mode": "seq-mean-token-mean", "ppo": {"ratio_level": "sequence"}},
     "cannot be combined with clip_cov"),
    ({"name": "kl_cov", "loss_agg_mode": "seq-mean-token-mean", "ppo": {"ratio_level": "sequence"}},
     "cannot be combined with kl_cov"),
    ({"name": "erpd", "loss_agg_mode": "seq-mean-token-mean", "ppo": {"ratio_level": "sequence"}},
     "cannot be combined with erpd"),
    ({"name": "grpo", "ppo": {"ratio_level": "sequence"}}, "set algorithm.loss_agg_mode='seq-mean-token-mean'"),
    ({"name": "erpd", "erpd": {"stage": 2}, "dapo": {"dynamic_sampling": True}}, "ERPD stage 2"),
    ({"name": "erpd", "erpd": {"stage": 2}, "dapo": {"overlong_buffer": 16}}, "ERPD stage 2"),
    ({"name": "grpo", "dapo": {"max_generation_rounds": 0}}, "dapo.max_generation_rounds must be an int >= 1"),
])
def test_meaningless_combinations_are_refused_at_config_time(settings, message):
    with pytest.raises(ValueError, match=message):
        config_from_dict(AlgorithmConfig, settings)


def test_combinations_that_make_sense_are_accepted():
    for settings in (
        {"name": "policy_split", "dapo": {"dynamic_sampling": True, "overlong_filtering": True, "overlong_buffer": 8}},
        {"name": "policy_split", "advantage": {"estimator": "rloo", "normalize_by_std": False},
         "loss_agg_mode": "seq-mean-token-sum-norm", "loss_norm_length": 256},
        {"name": "forking_tokens", "loss_agg_mode": "seq-mean-token-mean", "ppo": {"ratio_level": "sequence"}},
        {"name": "erpd", "erpd": {"stage": 1}, "dapo": {"dynamic_sampling": True}},
    ):
        config_from_dict(AlgorithmConfig, settings)
    assert ERPDConfig().stage == 1
