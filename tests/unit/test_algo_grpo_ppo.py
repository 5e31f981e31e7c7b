"""GRPO advantages (Eq. 2 of arXiv 2604.11510), PPO-clip (Eq. 7-8), clip-higher, dual clip, reference KL."""

import math

import pytest
import torch

from policy_split_megatron.algorithms.advantages import broadcast_to_tokens, grpo_advantages
from policy_split_megatron.algorithms.common import kl_per_token, masked_kl
from policy_split_megatron.algorithms.ppo import clipped_surrogate, ppo_clip_loss

REWARDS = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0])
GROUPS = torch.tensor([5, 5, 5, 5, 2, 2, 2])


def test_grpo_unbiased_std():
    adv = grpo_advantages(REWARDS, GROUPS)
    # group 5: mean 0.5, unbiased var = 4 * 0.25 / 3 = 1/3 -> A = +-0.5 / (sqrt(1/3) + 1e-6)
    # group 2: mean 2/3, unbiased var = (1/9 + 1/9 + 4/9) / 2 = 1/3 -> A = (1/3, 1/3, -2/3) / sqrt(1/3)
    s = math.sqrt(1 / 3) + 1e-6
    expected = torch.tensor([0.5, -0.5, -0.5, 0.5, 1 / 3, 1 / 3, -2 / 3]) / s
    torch.testing.assert_close(adv, expected)


def test_grpo_population_std_and_dr_grpo():
    adv = grpo_advantages(REWARDS[:4], GROUPS[:4], std_unbiased=False)
    torch.testing.assert_close(adv, torch.tensor([0.5, -0.5, -0.5, 0.5]) / (0.5 + 1e-6))  # population std 0.5
    adv = grpo_advantages(REWARDS, GROUPS, normalize_by_std=False)
    torch.testing.assert_close(adv, torch.tensor([0.5, -0.5, -0.5, 0.5, 1 / 3, 1 / 3, -2 / 3]))


def test_grpo_uniform_and_singleton_groups_are_zero():
    adv = grpo_advantages(torch.tensor([1.0, 1.0, 0.7]), torch.tensor([0, 0, 1]))
    assert torch.count_nonzero(adv) == 0


def test_broadcast_to_tokens_zeroes_padding():
    out = broadcast_to_tokens(torch.tensor([2.0, -1.0]), torch.tensor([[1, 1, 0], [1, 0, 0]]))
    assert out.tolist() == [[2.0, 2.0, 0.0], [-1.0, 0.0, 0.0]]


def _lp(ratios):
    """log-probs giving the requested ratios against old log-probs of log(0.5)."""
    old = torch.full((1, len(ratios)), math.log(0.5))
    return old + torch.log(torch.tensor([ratios])), old


def test_clipped_surrogate_branches():
    lp, old = _lp([1.5, 0.5, 0.5, 1.5, 4.0])
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0, -1.0]])
    t = clipped_surrogate(lp, old, adv, clip_eps_low=0.2, clip_eps_high=0.2)
    # max(-A r, -A clip(r, 0.8, 1.2)):
    #   r=1.5, A=+1: max(-1.5, -1.2) = -1.2 (clipped) | r=0.5, A=+1: max(-0.5, -0.8) = -0.5
    #   r=0.5, A=-1: max(0.5, 0.8) = 0.8 (clipped)    | r=1.5, A=-1: max(1.5, 1.2) = 1.5 | r=4: 4.0
    torch.testing.assert_close(t.loss, torch.tensor([[-1.2, -0.5, 0.8, 1.5, 4.0]]))
    assert t.clipped.tolist() == [[True, False, True, False, False]]
    # dual clip c = 3 caps the A < 0 token at -A * 3 = 3
    t = clipped_surrogate(lp, old, adv, clip_eps_low=0.2, clip_eps_high=0.2, dual_clip_c=3.0)
    torch.testing.assert_close(t.loss, torch.tensor([[-1.2, -0.5, 0.8, 1.5, 3.0]]))
    assert t.dual_clipped.tolist() == [[False, False, False, False, True]]
    # clip-higher: eps_high = 0.28 -> -1.28 on the first token; no clip at all -> -1.5
    t = clipped_surrogate(lp, old, adv, clip_eps_low=0.2, clip_eps_high=0.28)
    assert t.loss[0, 0].item() == pytest.approx(-1.28)
    t = clipped_surrogate(lp, old, adv, clip_eps_low=None, clip_eps_high=None)
    torch.testing.assert_close(t.loss, torch.tensor([[-1.5, -0.5, 0.5, 1.5, 4.0]]))


def test_ppo_clip_loss_value_gradient_and_metrics():
    lp, old = _lp([1.5, 0.5, 0.5, 1.5])
    lp = lp.requires_grad_(True)
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    mask = torch.tensor([[1, 1, 1, 1]])
    loss, m = ppo_clip_loss(lp, old, adv, mask, global_denominator=8)  # e.g. 4 more tokens on another rank
    # per-token [-1.2, -0.5, 0.8, 1.5] sums to 0.6, / 8
    assert loss.item() == pytest.approx(0.6 / 8)
    loss.backward()
    # clipped tokens have no gradient; unclipped: d(-A r)/dlogp = -A r -> [-, -0.5, -, 1.5] / 8
    torch.testing.assert_close(lp.grad, torch.tensor([[0.0, -0.5, 0.0, 1.5]]) / 8)
    assert m["pg_clipfrac"].item() == pytest.approx(0.5)
    assert m["pg_clipfrac_high"].item() == pytest.approx(0.25) and m["pg_clipfrac_low"].item() == pytest.approx(0.25)


def test_ppo_gradient_mask_keeps_the_denominator():
    lp, old = _lp([1.0, 1.0, 1.0])
    lp = lp.requires_grad_(True)
    adv = torch.tensor([[1.0, 2.0, 3.0]])
    loss, _ = ppo_clip_loss(lp, old, adv, torch.ones(1, 3), global_denominator=3,
                            gradient_mask=torch.tensor([[False, True, False]]))
    assert loss.item() == pytest.approx(-2.0 / 3)  # only -A*r = -2 of the middle token, over 3 tokens
    loss.backward()
    torch.testing.assert_close(lp.grad, torch.tensor([[0.0, -2.0 / 3, 0.0]]))


def test_kl_estimators_and_reference_kl_term():
    lp, ref = torch.tensor([[math.log(0.5)]]), torch.tensor([[math.log(0.25)]])
    # d = log ref - log p = log 0.5: k1 = -d = 0.6931, k2 = d^2/2 = 0.2402, k3 = e^d - 1 - d = 0.5 - 1 + 0.6931
    assert kl_per_token(lp, ref, "k1").item() == pytest.approx(math.log(2))
    assert kl_per_token(lp, ref, "k2").item() == pytest.approx(0.5 * math.log(2) ** 2)
    assert kl_per_token(lp, ref, "k3").item() == pytest.approx(-0.5 + math.log(2))
    with pytest.raises(ValueError, match="k1"):
        kl_per_token(lp, ref, "k9")
    old = lp.clone()
    loss, m = ppo_clip_loss(lp, old, torch.zeros(1, 1), torch.ones(1, 1), global_denominator=1,
                            ref_log_probs=ref, kl_coef=0.1, kl_estimator="k3")
    assert loss.item() == pytest.approx(0.1 * (-0.5 + math.log(2)))  # A = 0: only the KL term
    assert m["ref_kl"].item() == pytest.approx(-0.5 + math.log(2))
    with pytest.raises(ValueError, match="ref_log_probs"):
        ppo_clip_loss(lp, old, torch.zeros(1, 1), torch.ones(1, 1), global_denominator=1, kl_coef=0.1)


def test_masked_kl_reductions():
    p = torch.tensor([[-1.0, -1.0, -1.0], [-2.0, 0.0, 0.0]])
    q = torch.tensor([[-1.5, -2.0, 9.0], [-1.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    # k1 = p - q: row 0 [0.5, 1.0] mean 0.75; row 1 [-1.0]: seq mean (0.75 - 1) / 2 = -0.125; token mean 0.5/3
    assert masked_kl(p, q, mask, "k1").item() == pytest.approx(-0.125)
    assert masked_kl(p, q, mask, "k1", "token-mean").item() == pytest.approx(0.5 / 3)
