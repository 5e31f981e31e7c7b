"""ERPD (arXiv 2605.25582): stage-2 signal constructions, multi-teacher averaging, losses and KL metrics."""

import math

import pytest
import torch

from policy_split_megatron.algorithms.erpd import (
    distill_loss,
    kl_to_base,
    stage1_ce_loss,
    stage1_ce_weights,
    stage1_mse_loss,
    teacher_signal,
)

BASE = torch.tensor([[-1.0, -2.0, -0.5, 0.0]])
TEACHER = torch.tensor([[-0.5, -3.0, -0.5, 5.0]])
MASK = torch.tensor([[1, 1, 1, 0]])  # last position is padding


def test_signal_constructions_by_hand():
    # delta = log pi_T - log pi_base = [0.5, -1.0, 0.0]; padding -> 0
    assert teacher_signal(TEACHER, BASE, MASK).tolist() == [[0.5, -1.0, 0.0, 0.0]]
    torch.testing.assert_close(teacher_signal(TEACHER, BASE, MASK, construction="log_ratio_clipped", clip=0.6),
                               torch.tensor([[0.5, -0.6, 0.0, 0.0]]))
    assert teacher_signal(TEACHER, BASE, MASK, construction="sign").tolist() == [[1.0, -1.0, 0.0, 0.0]]
    assert teacher_signal(TEACHER, BASE, MASK, scale=2.0).tolist() == [[1.0, -2.0, 0.0, 0.0]]
    # reference-corrected: log pi_T - log pi_T0 with the teacher's own start T0 = [-0.7, -2.5, -1.0]
    t0 = torch.tensor([[-0.7, -2.5, -1.0, 0.0]])
    out = teacher_signal(TEACHER, BASE, MASK, construction="reference_corrected", teacher_ref_log_probs=t0)
    torch.testing.assert_close(out, torch.tensor([[0.2, -0.5, 0.5, 0.0]]))
    # without T0 the teacher started from the base: identical to log_ratio
    assert torch.equal(teacher_signal(TEACHER, BASE, MASK, construction="reference_corrected"),
                       teacher_signal(TEACHER, BASE, MASK))


def test_multi_teacher_signals_are_averaged_after_construction():
    teacher2 = torch.tensor([[-0.9, -1.0, -1.0, 0.0]])  # delta2 = [0.1, 1.0, -0.5]
    out = teacher_signal([TEACHER, teacher2], BASE, MASK)
    torch.testing.assert_close(out, torch.tensor([[0.3, 0.0, -0.25, 0.0]]))  # ([0.5,-1,0] + [0.1,1,-0.5]) / 2
    out = teacher_signal([TEACHER, teacher2], BASE, MASK, construction="sign")
    torch.testing.assert_close(out, torch.tensor([[1.0, 0.0, -0.5, 0.0]]))  # ([1,-1,0] + [1,1,-1]) / 2
    with pytest.raises(ValueError, match="2 teachers but 1"):
        teacher_signal([TEACHER, teacher2], BASE, MASK, construction="reference_corrected", teacher_ref_log_probs=[BASE])


def test_distill_loss_at_the_base_and_after_drift_with_kl_drop():
    signal = teacher_signal(TEACHER, BASE, MASK)  # [0.5, -1.0, 0.0]
    lp = BASE.clone().requires_grad_(True)
    loss, m = distill_loss(lp, BASE, signal, MASK, global_denominator=3, kl_coef=0.1)
    # ratio 1, k3 = 0: loss = -(0.5 - 1.0 + 0) / 3
    assert loss.item() == pytest.approx(0.5 / 3) and m["kl_to_base"].item() == 0.0
    loss.backward()
    torch.testing.assert_close(lp.grad, torch.tensor([[-0.5, 1.0, 0.0, 0.0]]) / 3)  # k3 has zero slope at r = 1

    drift = torch.tensor([[0.1, 0.5, 0.0, 0.0]])  # log pi - log pi_base
    lp = (BASE + drift).requires_grad_(True)
    loss, m = distill_loss(lp, BASE, signal, MASK, global_denominator=3, kl_coef=0.1, kl_drop_bound=0.1,
                           clip_eps_low=0.2, clip_eps_high=0.2)
    # k3(base -> pi) = e^d - 1 - d: [0.0051709, 0.1487213, 0] -> token 1 exceeds 0.1: its surrogate is dropped
    k3 = [math.exp(0.1) - 1.1, math.exp(0.5) - 1.5, 0.0]
    # token 0: A = 0.5, r = e^0.1 = 1.105 inside the clip -> -0.5 * 1.105; token 1 dropped; token 2 A = 0
    expected = (-0.5 * math.exp(0.1)) / 3 + 0.1 * sum(k3) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert m["kl_dropped_frac"].item() == pytest.approx(1 / 3)
    loss.backward()
    # grads: token 0: -A r + 0.1 (r - 1); token 1: only 0.1 (r - 1) (the KL still pulls it back)
    g = [(-0.5 * math.exp(0.1) + 0.1 * (math.exp(0.1) - 1)) / 3, 0.1 * (math.exp(0.5) - 1) / 3, 0.0, 0.0]
    torch.testing.assert_close(lp.grad, torch.tensor([g]))


def test_stage1_ce_trains_on_positive_responses_only():
    rewards = torch.tensor([1.0, 0.0, 1.0])
    adv = torch.tensor([0.5, -1.0, 1.2])
    mask = torch.tensor([[1, 1], [1, 1], [1, 0]])
    w, m = stage1_ce_weights(rewards, adv, mask)
    assert m.tolist() == [[True, True], [False, False], [True, False]] and w.tolist() == [[1, 1], [0, 0], [1, 0]]
    w_adv, _ = stage1_ce_weights(rewards, adv, mask, advantage_weighted=True)
    torch.testing.assert_close(w_adv, torch.tensor([[0.5, 0.5], [0.0, 0.0], [1.2, 0.0]]))
    lp = torch.tensor([[-1.0, -2.0], [-9.0, -9.0], [-0.5, -9.0]], requires_grad=True)
    loss, _ = stage1_ce_loss(lp, w, m, agg_mode="token-mean", global_denominator=3)
    assert loss.item() == pytest.approx((1.0 + 2.0 + 0.5) / 3)  # mean NLL over the 3 positive tokens


def test_stage1_mse_regresses_the_log_ratio_to_scaled_advantage():
    lp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    ref = torch.tensor([[-1.5, -2.0]])
    # residual = lp - ref - 0.1 * A with A = 2: [0.5 - 0.2, 0 - 0.2] = [0.3, -0.2]; 0.5 * r^2 token mean
    loss, _ = stage1_mse_loss(lp, ref, torch.tensor([2.0]), torch.ones(1, 2), target_scale=0.1,
                              agg_mode="token-mean", global_denominator=2)
    assert loss.item() == pytest.approx(0.5 * (0.09 + 0.04) / 2)
    loss.backward()
    torch.testing.assert_close(lp.grad, torch.tensor([[0.3, -0.2]]) / 2)


def test_kl_to_base_metrics():
    base = torch.tensor([[-1.0, -1.0], [-2.0, 0.0]])
    policy = torch.tensor([[-0.5, -1.5], [-2.0, 7.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    kl = kl_to_base(policy, base, mask)  # stored responses: sampled from the base -> KL(base || pi)
    # k1 = base - policy = [-0.5, 0.5 | 0] -> per-sequence means [0, 0] -> 0
    assert kl["kl_to_base_k1"].item() == pytest.approx(0.0, abs=1e-7)
    # k3 with d = policy - base = [0.5, -0.5 | 0]: e^d - 1 - d = [0.148721, 0.106531 | 0] -> (0.127626 + 0) / 2
    expected = ((math.exp(0.5) - 1.5) + (math.exp(-0.5) - 0.5)) / 2 / 2
    assert kl["kl_to_base_k3"].item() == pytest.approx(expected, rel=1e-5)
    kl = kl_to_base(policy, base, mask, sampled_from="policy")  # KL(pi || base): k1 = policy - base
    assert kl["kl_to_base_k1"].item() == pytest.approx(0.0, abs=1e-7)
    assert kl["kl_to_base_k3"].item() == pytest.approx(expected, rel=1e-5)  # symmetric deltas here
