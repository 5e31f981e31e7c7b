"""Loss aggregation across two real gloo data-parallel ranks.

Each rank takes its rows (uneven: 1 row vs 4 rows in two micro-batches), the loss denominator is
all-reduced (SUM), each micro-batch is backpropagated, the gradients are all-reduced (SUM), and the result
equals the single-process gradient of the full batch, for every aggregation mode. Also, from statistics
all-reduced over the two ranks, each equal to its full-batch value: covariance "global" centering, the
Forking-Tokens threshold (exact k-th largest entropy), EDGE's batch-mean entropy and the rollout-mismatch
metrics.
"""

import pytest
import torch
import torch.distributed as dist

from policy_split_megatron.algorithms import entropy_baselines as eb
from policy_split_megatron.algorithms import rollout_correction as rc
from policy_split_megatron.algorithms.aggregation import LOSS_AGG_MODES, local_loss_denominator
from policy_split_megatron.algorithms.covariance import (
    centering_means_from_stats,
    covariance_centering_stats,
    token_covariance,
)
from policy_split_megatron.algorithms.ppo import ppo_clip_loss
from tests.helpers.distributed import run_distributed

# rank -> its micro-batches (row indices of the full batch)
MICRO_BATCHES = {0: [[0]], 1: [[1, 2], [3, 4]]}


def _problem():
    g = torch.Generator().manual_seed(11)
    feats = torch.randn(5, 6, 4, generator=g)
    tokens = torch.randint(0, 7, (5, 6), generator=g)
    mask = torch.arange(6).unsqueeze(0) < torch.tensor([6, 1, 3, 5, 2]).unsqueeze(1)
    old = torch.log_softmax(torch.randn(5, 6, 7, generator=g), -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    adv = torch.randn(5, generator=g).unsqueeze(-1).expand(5, 6).contiguous()
    weight = torch.randn(4, 7, generator=g)
    return feats, tokens, mask, old, adv, weight


def _log_probs(w, feats, tokens):
    return torch.log_softmax(feats @ w, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def _grad(micro_batches, mode, all_reduce: bool):
    feats, tokens, mask, old, adv, weight = _problem()
    w = weight.clone().requires_grad_(True)
    denom = sum(local_loss_denominator(mask[rows], mode, norm_length=6) for rows in micro_batches)
    if all_reduce:
        dist.all_reduce(denom, op=dist.ReduceOp.SUM)
    for rows in micro_batches:
        lp = _log_probs(w, feats[rows], tokens[rows])
        loss, _ = ppo_clip_loss(lp, old[rows], adv[rows], mask[rows], global_denominator=denom, agg_mode=mode,
                                clip_eps_low=0.2, clip_eps_high=0.28)
        loss.backward()
    grad = w.grad.clone()
    if all_reduce:
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
    return grad


def _rank_body(rank, world_size):
    out = {mode: _grad(MICRO_BATCHES[rank], mode, all_reduce=True) for mode in LOSS_AGG_MODES}
    feats, tokens, mask, old, adv, weight = _problem()
    rows = [r for mb in MICRO_BATCHES[rank] for r in mb]
    lp = _log_probs(weight, feats[rows], tokens[rows])
    stats = covariance_centering_stats(adv[rows], lp, mask[rows])
    dist.all_reduce(stats, op=dist.ReduceOp.SUM)
    out["cov"] = (rows, token_covariance(adv[rows], lp, mask[rows], centering_means_from_stats(stats)))

    def dp_sum(t):
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    entropy = _entropy(feats, weight)
    out["forking"] = eb.global_forking_threshold(entropy[rows], mask[rows], 0.3, dp_sum)
    out["eda_mean"] = eb.batch_mean_entropy_from_stats(dp_sum(eb.response_entropy_stats(entropy[rows], mask[rows])))
    sums, top = rc.mismatch_stats(old[rows], old[rows] + lp.detach(), mask[rows])
    dist.all_reduce(top, op=dist.ReduceOp.MAX)
    out["mismatch"] = rc.mismatch_metrics_from_stats(dp_sum(sums), top)
    return out


def _entropy(feats, weight):
    logp = torch.log_softmax(feats @ weight, -1)
    return -(logp.exp() * logp).sum(-1)


def test_dp_gradient_equals_full_batch_gradient_for_every_mode():
    results = run_distributed(_rank_body, 2, tp=1)
    for mode in LOSS_AGG_MODES:
        full = _grad([list(range(5))], mode, all_reduce=False)
        for rank in range(2):
            torch.testing.assert_close(results[rank][mode], full, msg=f"mode {mode}, rank {rank}")
    feats, tokens, mask, old, adv, weight = _problem()
    full_cov = token_covariance(adv, _log_probs(weight, feats, tokens), mask)
    for rank in range(2):
        rows, cov = results[rank]["cov"]
        torch.testing.assert_close(cov, full_cov[rows])
        if rank == 0:  # a rank's own micro-batch centering differs: global centering is not a no-op here
            local = token_covariance(adv[rows], _log_probs(weight, feats[rows], tokens[rows]), mask[rows])
            assert not torch.allclose(local, cov)
    entropy = _entropy(feats, weight)
    _, threshold = eb.forking_token_mask(entropy, mask, top_fraction=0.3)
    mean_p, _ = eb.response_entropy_stats(entropy, mask)
    mismatch = rc.mismatch_metrics_from_stats(*rc.mismatch_stats(old, old + _log_probs(weight, feats, tokens), mask))
    for rank in range(2):
        assert results[rank]["forking"].item() == threshold.item()
        assert results[rank]["eda_mean"].item() == pytest.approx(mean_p.item() / mask.any(-1).sum().item())
        assert results[rank]["mismatch"] == pytest.approx(mismatch)
