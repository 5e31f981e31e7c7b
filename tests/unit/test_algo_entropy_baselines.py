"""Entropy baselines of arXiv 2604.11510 App. B.3: regularization, Entropy Advantage, EDGE, Forking Tokens."""

import pytest
import torch

from policy_split_megatron.algorithms import entropy_baselines as eb
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


# -- global statistics: two halves reduced equal the whole batch --------------------------------------


def _entropy_batch(seed, ties=False):
    g = torch.Generator().manual_seed(seed)
    h = torch.rand(8, 7, generator=g) * 3
    if ties:
        h = torch.round(h * 2) / 2  # many equal values, some exact zeros
        h[0, 0] = -1e-7  # a slightly negative entropy from rounding must still sort below 0
    mask = torch.rand(8, 7, generator=g) > 0.3
    return h, mask


def _two_rank_threshold(h, mask, top_fraction):
    """The radix-select protocol driven by hand for two 'ranks' (rows 0-2 and 3-7): SUM = adding."""
    halves = [(h[:3], mask[:3]), (h[3:], mask[3:])]
    k = eb.forking_k(sum(eb.valid_token_count(m) for _, m in halves), top_fraction)
    high, k_low = eb.radix_step(sum(eb.radix_histogram(x, m) for x, m in halves), k)
    low, _ = eb.radix_step(sum(eb.radix_histogram(x, m, high) for x, m in halves), k_low)
    return eb.radix_value(high, low)


@pytest.mark.parametrize("seed,ties", [(0, False), (1, True), (2, True)])
@pytest.mark.parametrize("top_fraction", [0.01, 0.2, 0.5, 1.0])
def test_forking_threshold_from_two_halves_equals_the_whole_batch(seed, ties, top_fraction):
    h, mask = _entropy_batch(seed, ties)
    whole_mask, whole = eb.forking_token_mask(h, mask, top_fraction=top_fraction)
    assert _two_rank_threshold(h, mask, top_fraction).item() == whole.item()
    assert eb.global_forking_threshold(h, mask, top_fraction).item() == whole.item()  # one rank: identity reducer
    top_half_mask, _ = eb.forking_token_mask(h[:3], mask[:3], threshold=_two_rank_threshold(h, mask, top_fraction))
    torch.testing.assert_close(top_half_mask, whole_mask[:3])
    # a per-rank threshold (what a trainer gets without reducing) is a different selection
    if top_fraction == 0.2 and not ties:
        local = [eb.forking_token_mask(x, m, top_fraction=top_fraction)[1].item()
                 for x, m in ((h[:3], mask[:3]), (h[3:], mask[3:]))]
        assert any(t != whole.item() for t in local)


def test_forking_threshold_without_any_token_keeps_nothing():
    h, mask = _entropy_batch(0)
    assert eb.global_forking_threshold(h, torch.zeros_like(mask), 0.2).item() == float("inf")


def test_edge_batch_mean_entropy_from_two_halves_equals_the_whole():
    h, mask = _entropy_batch(3)
    mask[5] = False  # a response without tokens counts in neither sum
    stats = eb.response_entropy_stats(h[:3], mask[:3]) + eb.response_entropy_stats(h[3:], mask[3:])
    p = torch.stack([h[i][mask[i]].mean() for i in range(8) if mask[i].any()])
    assert eb.batch_mean_entropy_from_stats(stats).item() == pytest.approx(p.mean().item())
    adv = torch.randn(8, generator=torch.Generator().manual_seed(4))
    groups = torch.zeros(8, dtype=torch.long)
    whole, _ = eb.entropy_driven_advantages(adv, h, mask, groups, normalizer="batch")
    half, _ = eb.entropy_driven_advantages(adv[:3], h[:3], mask[:3], groups[:3], normalizer="batch",
                                           batch_mean_entropy=eb.batch_mean_entropy_from_stats(stats))
    torch.testing.assert_close(half, whole[:3])
