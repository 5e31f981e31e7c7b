"""Small masked/grouped tensor helpers shared by every algorithm module.

Conventions (the whole package follows them):
  * per-token tensors are [B, T], right-padded, with `response_mask` [B, T] (bool or float, 1 on the
    response tokens); every per-token tensor handed to one call must be aligned with that mask;
  * sequence-level tensors are [B]; `group_ids` is a long tensor [B]: rows with equal ids form one group;
  * statistics here are LOCAL to the tensors given: anything global (data-parallel) is computed by the
    caller and passed in. This package never touches process groups.
"""

from __future__ import annotations

import torch

KL_ESTIMATORS = ("k1", "k2", "k3", "abs")


def as_bool_mask(mask: torch.Tensor) -> torch.Tensor:
    return mask if mask.dtype == torch.bool else mask != 0


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    # torch.where, not x * mask: padding may hold inf/nan (e.g. -inf log-probs) and 0 * inf = nan.
    zeros = torch.zeros((), dtype=x.dtype, device=x.device)
    masked = torch.where(as_bool_mask(mask), x, zeros)
    return masked.sum() if dim is None else masked.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    """Mean over the masked entries; 0 where there is none (an empty selection has no signal)."""
    count = as_bool_mask(mask).sum() if dim is None else as_bool_mask(mask).sum(dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1).to(x.dtype)


def seq_mean_token_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over sequences (with at least one valid token) of each sequence's masked token mean."""
    m = as_bool_mask(mask)
    has_tokens = m.any(dim=-1)
    per_seq = masked_mean(x, m, dim=-1)
    return masked_mean(per_seq, has_tokens)


def dense_group_index(group_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Map arbitrary group ids to 0..G-1 (order of first sorted id) for scatter-based reductions."""
    uniq, inverse = torch.unique(group_ids, return_inverse=True)
    return inverse, int(uniq.numel())


def group_mean_std(
    values: torch.Tensor, group_index: torch.Tensor, num_groups: int, weight: torch.Tensor, unbiased: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-group (mean, std, count) of `values` (flattened) where `weight` (0/1, same shape) is 1.

    Two-pass (centre first, then square) to stay accurate for large offsets. A group whose estimator is
    undefined (unbiased with a single entry, or no entry) gets std 0, so that its z-scores are exactly 0.
    """
    v = values.reshape(-1).to(torch.float64)
    w = weight.reshape(-1).to(torch.float64)
    idx = group_index.reshape(-1)
    count = torch.zeros(num_groups, dtype=torch.float64, device=v.device).index_add_(0, idx, w)
    total = torch.zeros_like(count).index_add_(0, idx, v * w)
    mean = total / count.clamp(min=1)
    sq = torch.zeros_like(count).index_add_(0, idx, (v - mean[idx]) ** 2 * w)
    dof = count - 1 if unbiased else count
    std = torch.where(dof > 0, (sq / dof.clamp(min=1)).sqrt(), torch.zeros_like(sq))
    return mean, std, count


def kl_per_token(log_p: torch.Tensor, log_q: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-token estimate of KL(p || q) from tokens SAMPLED FROM p (Schulman's k1/k2/k3).

    With d = log q - log p:  k1 = -d (unbiased, can be negative), k2 = d^2 / 2, k3 = exp(d) - 1 - d
    (unbiased and >= 0), "abs" = |d| (KL-Cov's penalty, arXiv 2505.22617 code). Which KL is estimated
    depends on who sampled the tokens: pass the sampling policy's log-probs as `log_p`.
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"KL estimator must be one of {KL_ESTIMATORS}, got {estimator!r}")
    d = log_q - log_p
    if estimator == "k1":
        return -d
    if estimator == "k2":
        return 0.5 * d * d
    if estimator == "abs":
        return d.abs()
    d = d.clamp(-20.0, 20.0)  # exp overflow guard; |d| > 20 nats is already a broken trust region
    return torch.expm1(d) - d


def masked_kl(
    log_p: torch.Tensor,
    log_q: torch.Tensor,
    mask: torch.Tensor,
    estimator: str = "k1",
    reduction: str = "seq-mean-token-mean",
) -> torch.Tensor:
    """Masked estimate of KL(p || q) on tokens sampled from p, reduced to a scalar.

    reduction: "seq-mean-token-mean" (per-sequence token mean, then mean over sequences; verl's metric
    convention) or "token-mean" (mean over all valid tokens).
    """
    kl = kl_per_token(log_p, log_q, estimator)
    if reduction == "seq-mean-token-mean":
        return seq_mean_token_mean(kl, mask)
    if reduction == "token-mean":
        return masked_mean(kl, mask)
    raise ValueError(f"reduction must be 'seq-mean-token-mean' or 'token-mean', got {reduction!r}")


def gather_from_partner(
    x: torch.Tensor, response_mask: torch.Tensor, partner_index: torch.Tensor, fill: float = 0.0
) -> torch.Tensor:
    """out[i] = the response-token values of row partner_index[i], written at row i's response positions.

    Rows and partners hold the SAME response tokens (possibly at other positions, since the prompts of the
    two conditionings differ in length), so the k-th response token of row i is the k-th of its partner.
    """
    m = as_bool_mask(response_mask)
    partner_index = partner_index.to(torch.long)
    if not torch.equal(m.sum(-1), m.sum(-1)[partner_index]):
        raise ValueError("partner rows must have the same number of response tokens as their rows")
    out = torch.full_like(x, fill)
    # Row-major boolean indexing lists row i's tokens in order; x[partner][m[partner]] lists the partner's
    # tokens in the same row order, with the same per-row counts, so the assignment aligns token by token.
    out[m] = x[partner_index][m[partner_index]]
    return out
