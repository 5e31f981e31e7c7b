"""Loss aggregation with a global denominator: hand values and micro-batch invariance of the gradient."""

import pytest
import torch

from policy_split_megatron.algorithms.aggregation import LOSS_AGG_MODES, aggregate_loss, local_loss_denominator
from policy_split_megatron.algorithms.ppo import ppo_clip_loss

LOSS = torch.tensor([[1.0, 2.0, 3.0, 7.0], [4.0, 7.0, 7.0, 7.0], [7.0, 7.0, 7.0, 7.0]])
MASK = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])  # 7.0 = padding, row 2 is empty


@pytest.mark.parametrize(
    "mode,denominator,expected",
    [
        ("token-mean", 4, (1 + 2 + 3 + 4) / 4),  # 4 valid tokens
        ("seq-mean-token-mean", 2, ((1 + 2 + 3) / 3 + 4 / 1) / 2),  # 2 non-empty sequences
        ("seq-mean-token-sum", 2, ((1 + 2 + 3) + 4) / 2),
        ("seq-mean-token-sum-norm", 2 * 8, ((1 + 2 + 3) / 8 + 4 / 8) / 2),  # Dr. GRPO: constant L = 8
    ],
)
def test_modes_by_hand(mode, denominator, expected):
    assert local_loss_denominator(MASK, mode, norm_length=8).item() == denominator
    assert aggregate_loss(LOSS, MASK, mode, denominator).item() == pytest.approx(expected)


def test_zero_denominator_gives_zero_loss_with_finite_gradient():
    x = torch.ones(1, 2, requires_grad=True)
    loss = aggregate_loss(x, torch.zeros(1, 2), "token-mean", 0)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(x.grad, torch.zeros(1, 2))


def test_token_mean_is_dapo_token_level_loss_and_weighs_long_sequences_more():
    # DAPO Eq. 12: sum over all tokens of all sequences / total tokens. A sequence of 3 tokens carries 3/4
    # of the loss, whereas the per-sequence mean (GRPO's sample-level loss) gives it 1/2.
    assert aggregate_loss(LOSS, MASK, "token-mean", 4).item() == pytest.approx((1 + 2 + 3 + 4) / 4)
    grad = torch.zeros_like(LOSS, requires_grad=True)
    aggregate_loss(grad, MASK, "token-mean", 4).backward()
    assert grad.grad[0, :3].sum().item() == pytest.approx(3 / 4) and grad.grad[1, 0].item() == pytest.approx(1 / 4)
    seq = torch.zeros_like(LOSS, requires_grad=True)
    aggregate_loss(seq, MASK, "seq-mean-token-mean", 2).backward()
    assert seq.grad[0, :3].sum().item() == pytest.approx(1 / 2)


def test_normalised_mode_needs_its_constant():
    with pytest.raises(ValueError, match="norm_length"):
        local_loss_denominator(MASK, "seq-mean-token-sum-norm")


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match="token-mean"):
        aggregate_loss(LOSS, MASK, "token-sum-ish", 1)


def _toy_problem():
    """A tiny linear policy: log pi(token) from a linear map of fixed features; rows of unequal length."""
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(5, 6, 4, generator=g)  # [B, T, hidden]
    tokens = torch.randint(0, 7, (5, 6), generator=g)
    lengths = torch.tensor([6, 1, 3, 5, 2])
    mask = torch.arange(6).unsqueeze(0) < lengths.unsqueeze(1)
    old = torch.log_softmax(torch.randn(5, 6, 7, generator=g), -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    adv = torch.randn(5, generator=g).unsqueeze(-1).expand(5, 6)
    weight = torch.randn(4, 7, generator=g)
    return feats, tokens, mask, old, adv, weight


def _grad(weight, feats, tokens, mask, old, adv, mode, splits):
    w = weight.clone().requires_grad_(True)
    denom = sum(local_loss_denominator(mask[rows], mode, norm_length=6) for rows in splits)
    for rows in splits:
        lp = torch.log_softmax(feats[rows] @ w, -1).gather(-1, tokens[rows].unsqueeze(-1)).squeeze(-1)
        loss, _ = ppo_clip_loss(lp, old[rows], adv[rows], mask[rows], global_denominator=denom, agg_mode=mode)
        loss.backward()
    return w.grad


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_gradient_does_not_depend_on_micro_batching(mode):
    feats, tokens, mask, old, adv, weight = _toy_problem()
    full = _grad(weight, feats, tokens, mask, old, adv, mode, [torch.arange(5)])
    for splits in ([torch.tensor([0]), torch.tensor([1, 2, 3, 4])],
                   [torch.tensor([3, 1]), torch.tensor([0]), torch.tensor([4, 2])]):
        torch.testing.assert_close(_grad(weight, feats, tokens, mask, old, adv, mode, splits), full)
    # Averaging per-micro-batch means (the classic bug) would NOT match: the test can tell the difference.
    w = weight.clone().requires_grad_(True)
    for rows in (torch.tensor([0]), torch.tensor([1, 2, 3, 4])):
        lp = torch.log_softmax(feats[rows] @ w, -1).gather(-1, tokens[rows].unsqueeze(-1)).squeeze(-1)
        local = local_loss_denominator(mask[rows], mode, norm_length=6)
        (ppo_clip_loss(lp, old[rows], adv[rows], mask[rows], global_denominator=local, agg_mode=mode)[0] / 2).backward()
    assert not torch.allclose(w.grad, full)
