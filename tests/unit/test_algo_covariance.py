"""Clip-Cov / KL-Cov (arXiv 2505.22617, verl semantics) and the annealing schedules."""

import math

import pytest
import torch

from policy_split_megatron.algorithms.config import ScheduleConfig
from policy_split_megatron.algorithms.covariance import (
    centering_means_from_stats,
    clip_cov_loss,
    clip_cov_selection,
    covariance_centering_stats,
    kl_cov_loss,
    kl_cov_selection,
    token_covariance,
)
from policy_split_megatron.algorithms.schedules import schedule_value

NEG = float("-inf")


def test_token_covariance_is_a_centred_cross_product():
    adv = torch.tensor([[1.0, 1.0, 5.0], [-1.0, -1.0, 0.0]])
    lp = torch.tensor([[-1.0, -3.0, 0.0], [-1.0, -3.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    # valid tokens: mean A = 0, mean log pi = -2 -> cov = (A - 0) * (lp + 2) = [1, -1 | -1, 1]; padding -inf
    cov = token_covariance(adv, lp, mask)
    assert cov.tolist() == [[1.0, -1.0, NEG], [-1.0, 1.0, NEG]]
    # global centering uses the given means instead: mean A = 1, mean log pi = 0
    cov = token_covariance(adv, lp, mask, centering_means=(torch.tensor(1.0), torch.tensor(0.0)))
    assert cov.tolist() == [[0.0, 0.0, NEG], [2.0, 6.0, NEG]]


def test_centering_stats_sum_to_global_means():
    adv = torch.tensor([[1.0, 2.0], [3.0, 9.0]])
    lp = torch.tensor([[-1.0, -2.0], [-4.0, 9.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    stats = covariance_centering_stats(adv[:1], lp[:1], mask[:1]) + covariance_centering_stats(adv[1:], lp[1:], mask[1:])
    mean_a, mean_lp = centering_means_from_stats(stats)  # as after an all-reduce SUM over two ranks
    assert mean_a.item() == pytest.approx(2.0) and mean_lp.item() == pytest.approx(-7.0 / 3)


def _band_case():
    cov = torch.tensor([[0.5, 1.0, 1.5, 2.0, 5.0], [3.0, 6.0, 4.0, 2.5, 2.5]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)  # 8 valid tokens
    ppo_clipped = torch.tensor([[0, 0, 0, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    return cov, mask, ppo_clipped


def test_clip_cov_band_is_strict_and_excludes_ppo_clipped_and_padding():
    cov, mask, ppo_clipped = _band_case()
    # candidates: lb=1 < cov < ub=5, valid, not PPO-clipped -> 1.5, 2.0, 4.0
    # (1.0 and 5.0 sit on the bounds, 6.0 is out, 3.0 is PPO-clipped, the 2.5s are padding)
    sel, num_candidates = clip_cov_selection(cov, mask, ppo_clipped, ratio=1.0, lb=1.0, ub=5.0)
    assert num_candidates == 3
    assert sel.nonzero().tolist() == [[0, 2], [0, 3], [1, 2]]  # ratio 1 -> min(8, 3) = all candidates


def test_clip_cov_selection_count_and_reproducibility():
    cov, mask, ppo_clipped = _band_case()
    # count = max(int(ratio * 8), 1): 2e-4 -> 1; 0.25 -> 2
    for ratio, count in ((2e-4, 1), (0.25, 2)):
        sel, _ = clip_cov_selection(cov, mask, ppo_clipped, ratio=ratio, lb=1.0, ub=5.0,
                                    generator=torch.Generator().manual_seed(0))
        assert int(sel.sum()) == count
        candidates = {(0, 2), (0, 3), (1, 2)}
        assert {tuple(x) for x in sel.nonzero().tolist()} <= candidates
    picks = [tuple(map(tuple, clip_cov_selection(cov, mask, ppo_clipped, ratio=0.25, lb=1.0, ub=5.0,
                                                 generator=torch.Generator().manual_seed(s))[0].nonzero().tolist()))
             for s in (7, 7, 8, 9, 10, 11)]
    assert picks[0] == picks[1]  # same seed, same tokens
    assert len(set(picks)) > 1  # different seeds draw different subsets: it is random


def test_clip_cov_loss_detaches_selected_tokens_but_keeps_them_in_the_denominator():
    lp = torch.full((1, 4), -1.0, requires_grad=True)
    old = torch.full((1, 4), -1.0)  # ratio 1: nothing PPO-clipped
    adv = torch.tensor([[-0.5, -1.5, -2.0, -6.0]])
    # centering (0, 0): cov = A * log pi = [0.5, 1.5, 2.0, 6.0] -> band (1, 5) holds tokens 1 and 2
    loss, m = clip_cov_loss(lp, old, adv, torch.ones(1, 4), global_denominator=4, ratio=1.0,
                            centering_means=(torch.tensor(0.0), torch.tensor(0.0)))
    # per-token -A r = [0.5, 1.5, 2.0, 6.0], tokens 1 and 2 zeroed: (0.5 + 6.0) / 4
    assert loss.item() == pytest.approx(6.5 / 4)
    loss.backward()
    torch.testing.assert_close(lp.grad, torch.tensor([[0.5, 0.0, 0.0, 6.0]]) / 4)
    assert m["clip_cov_selected"].item() == 2 and m["clip_cov_selected_frac"].item() == pytest.approx(0.5)


def test_kl_cov_top_k_rule():
    cov = torch.tensor([[0.3, 2.0, -0.2, 0.9, 0.1], [1.5, 0.0, 0.0, 7.0, 7.0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    cov = torch.where(mask, cov, torch.full_like(cov, NEG))
    # N = 8 valid: k = max(1, int(8 * ratio)); 2e-4 -> 1 ; 0.25 -> 2 ; padding (7.0 -> -inf) never picked
    assert kl_cov_selection(cov, mask, ratio=2e-4).nonzero().tolist() == [[0, 1]]
    assert kl_cov_selection(cov, mask, ratio=0.25).nonzero().tolist() == [[0, 1], [1, 0]]


def test_kl_cov_loss_hand_computed():
    lp = torch.tensor([[-0.5, -2.0, -0.1, -4.0]], requires_grad=True)
    old = torch.tensor([[-0.5, -2.3, -0.3, -1.0]])
    adv = torch.tensor([[1.0, -1.0, 2.0, 0.5]])
    # centering (0, 0): cov = A * lp = [-0.5, 2.0, -0.2, -2.0]; ratio 0.5 -> k = 2 -> tokens 1 and 2
    loss, m = kl_cov_loss(lp, old, adv, torch.ones(1, 4), global_denominator=4, ratio=0.5, beta=1.0,
                          centering_means=(torch.tensor(0.0), torch.tensor(0.0)))
    r = [math.exp(0.0), math.exp(0.3), math.exp(0.2), math.exp(-3.0)]
    # no PPO clip: -A r everywhere, + beta |lp - old| on tokens 1 (0.3) and 2 (0.2); token 3's ratio is not clipped
    expected = (-1.0 * r[0] + (1.0 * r[1] + 0.3) + (-2.0 * r[2] + 0.2) + (-0.5 * r[3])) / 4
    assert loss.item() == pytest.approx(expected)
    assert m["kl_cov_selected"].item() == 2
    loss.backward()
    # d/dlp: -A r (+ beta * sign(lp - old) on the selected tokens)
    torch.testing.assert_close(lp.grad, torch.tensor([[-r[0], r[1] + 1.0, -2 * r[2] + 1.0, -0.5 * r[3]]]) / 4)
    # beta annealed to 0: plain unclipped policy gradient
    loss0, _ = kl_cov_loss(lp, old, adv, torch.ones(1, 4), global_denominator=4, ratio=0.5, beta=0.0,
                           centering_means=(torch.tensor(0.0), torch.tensor(0.0)))
    assert loss0.item() == pytest.approx(expected - 0.5 / 4)


def test_linear_and_cosine_reach_zero_at_the_end_step_and_stay():
    for kind in ("linear", "cosine"):
        values = [schedule_value(kind, t, initial=1.0, total_steps=10) for t in range(15)]
        assert values[0] == 1.0 and values[10] == 0.0 and values[14] == 0.0
        assert all(a >= b for a, b in zip(values, values[1:]))
        assert values[9] > 0
    assert schedule_value("linear", 5, initial=1.0, total_steps=10) == pytest.approx(0.5)
    assert schedule_value("cosine", 5, initial=1.0, total_steps=10) == pytest.approx(0.5)  # (1 + cos(pi/2)) / 2
    assert schedule_value("cosine", 2, initial=1.0, final=0.2, total_steps=4) == pytest.approx(0.6)  # floor 0.2


def test_robbins_monro_decays_monotonically_toward_zero():
    v = [schedule_value("robbins_monro", t, initial=1.0, t0=10, power=1.0) for t in range(0, 2000, 10)]
    assert v[0] == 1.0 and v[1] == pytest.approx(0.5)  # 1 / (1 + 10/10)
    assert all(a > b > 0 for a, b in zip(v, v[1:]))
    assert schedule_value("robbins_monro", 10**7, initial=1.0, t0=10, power=0.75) < 1e-3
    assert schedule_value("robbins_monro", 30, initial=1.0, t0=10, power=0.75) == pytest.approx(4 ** -0.75)
    with pytest.raises(ValueError, match=r"\(0.5, 1\]"):
        schedule_value("robbins_monro", 1, initial=1.0, power=0.5)


def test_schedule_config_validation():
    with pytest.raises(ValueError, match="schedule.total_steps"):
        ScheduleConfig(kind="linear")
    with pytest.raises(ValueError, match="schedule.power must be in"):
        ScheduleConfig(kind="robbins_monro", power=1.5)
    with pytest.raises(ValueError, match="schedule.kind must be one of"):
        ScheduleConfig(kind="exp")
    assert ScheduleConfig(kind="linear", initial=1.0, total_steps=4).value(4) == 0.0


def test_clip_cov_loss_never_selects_a_token_ppo_already_clipped():
    # centering (0, -10): cov = A * (log pi + 10) = 9 A for log pi = -1
    lp = torch.tensor([[-1.0, -1.0]], requires_grad=True)
    old = torch.tensor([[-1.0 - math.log(1.5), -1.0]])  # token 0: ratio 1.5 > 1.2 with A > 0 -> PPO-clipped
    adv = torch.tensor([[0.3, 0.2]])  # cov = [2.7, 1.8]: both inside the band (1, 5)
    loss, m = clip_cov_loss(lp, old, adv, torch.ones(1, 2), global_denominator=2, ratio=1.0,
                            centering_means=(torch.tensor(0.0), torch.tensor(-10.0)))
    assert m["clip_cov_selected"].item() == 1 and m["clip_cov_candidates"].item() == 1  # only token 1
    # token 0 keeps its clipped loss -A * 1.2 = -0.36; token 1 is detached (0): (-0.36 + 0) / 2
    assert loss.item() == pytest.approx(-0.18)
    loss.backward()
    assert torch.count_nonzero(lp.grad) == 0  # clipped token: no gradient; selected token: detached
