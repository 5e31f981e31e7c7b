"""Entropy baselines of arXiv 2604.11510 App. B.3: regularization, Entropy Advantage, EDGE, Forking Tokens."""

import pytest
import torch

from policy_split_megatron.algorithms.entropy_baselines import (
    entropy_bonus_loss,
    entropy_driven_advantages,
    entropy_shaped_advantages,
    forking_token_mask,
)


def test_entropy_bonus_term_value_and_gradient():
    h = torch.tensor([[1.0, 2.0], [3.0, 50.0]], requires_grad=True)
    mask = torch.tensor([[1, 1], [1, 0]])
    term, m = entropy_bonus_loss(h, mask, coef=0.003, agg_mode="token-mean", global_denominator=3)
    # -c * (1 + 2 + 3) / 3 = -0.006 (padding entropy 50 ignored)
    assert term.item() == pytest.approx(-0.006)
    term.backward()
    torch.testing.assert_close(h.grad, torch.tensor([[-0.001, -0.001], [-0.001, 0.0]]))
    assert m["entropy"].item() == pytest.approx(2.0)


def test_entropy_advantage_never_flips_the_sign():
    adv = torch.tensor([[1.0, -1.0, 0.0, 0.5, -2.0]])
    h = torch.tensor([[0.5, 5.0, 2.0, 0.5, 1.0]], requires_grad=True)
    out = entropy_shaped_advantages(adv, h, torch.ones(1, 5), alpha=0.4, kappa=2.0)
    # psi = min(0.4 H, |A|/2) = [min(.2, .5), min(2, .5), min(.8, 0), min(.2, .25), min(.4, 1)] = [.2, .5, 0, .2, .4]
    torch.testing.assert_close(out, torch.tensor([[1.2, -0.5, 0.0, 0.7, -1.6]]))
    assert not out.requires_grad  # H is detached
    # padding gets 0
    assert entropy_shaped_advantages(adv, h, torch.tensor([[1, 1, 1, 1, 0]]))[0, 4].item() == 0.0


def test_entropy_driven_advantage_group_and_batch_normalisers():
    # per-response mean entropies P: r0 tokens [0.5, 1.5] -> 1, r1 [3] -> 3, r2 [4, 4] -> 4, r3 [4] -> 4
    h = torch.tensor([[0.5, 1.5], [3.0, 9.0], [4.0, 4.0], [4.0, 9.0]])
    mask = torch.tensor([[1, 1], [1, 0], [1, 1], [1, 0]])
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])
    groups = torch.tensor([0, 0, 1, 1])
    out, _ = entropy_driven_advantages(adv, h, mask, groups, normalizer="group", eps=1e-6)
    # group 0 mean P = 2: A / (P / 2) = [1 * 2/1, -1 * 2/3]; group 1 mean 4: unchanged
    torch.testing.assert_close(out, torch.tensor([2.0, -2.0 / 3, 0.5, -0.5]), atol=1e-5, rtol=0)
    out, _ = entropy_driven_advantages(adv, h, mask, groups, normalizer="batch")
    # batch mean P = (1 + 3 + 4 + 4) / 4 = 3: [3/1, -3/3, 0.5 * 3/4, -0.5 * 3/4]
    torch.testing.assert_close(out, torch.tensor([3.0, -1.0, 0.375, -0.375]), atol=1e-5, rtol=0)
    out, _ = entropy_driven_advantages(adv, h, mask, groups, normalizer="batch", batch_mean_entropy=2.0)
    torch.testing.assert_close(out, torch.tensor([2.0, -2.0 / 3, 0.25, -0.25]), atol=1e-5, rtol=0)


def test_forking_tokens_keep_the_top_fraction_of_valid_tokens():
    h = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.5, 9.0], [0.6, 0.7, 0.8, 0.9, 1.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 0]])  # the 9.0s are padding
    sel, thr = forking_token_mask(h, mask, top_fraction=0.2)
    # 10 valid tokens, k = ceil(0.2 * 10) = 2 -> 0.9 and 1.0
    assert thr.item() == pytest.approx(0.9)
    assert sel.nonzero().tolist() == [[1, 3], [1, 4]]
    sel, _ = forking_token_mask(h, mask, top_fraction=0.3)  # k = 3 (not 4 from 0.3 * 10 = 3.0000000000000004)
    assert int(sel.sum()) == 3
    sel, _ = forking_token_mask(h, mask, threshold=0.45)  # a threshold computed elsewhere
    assert int(sel.sum()) == 6
