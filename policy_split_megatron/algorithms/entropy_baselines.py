"""Entropy baselines of arXiv 2604.11510 §4.1 / App. B.3, with the interfaces of the rest of the package.

* Entropy Regularization (schulman2017proximal; verl `entropy_coeff`): loss += -c * agg(H_t), H the
  full-vocabulary entropy of the CURRENT policy (with gradient). Paper coefficient c = 0.003. c may be
  annealed (schedules.py): Lei & Baehr (arXiv 2604.09676) show a constant bonus biases the fixed point.
* Entropy Advantage (cheng2025reasoning, arXiv 2506.14758): A'_t = A_t + psi_t,
  psi_t = min(alpha * H_t.detach(), |A_t| / kappa), alpha = 0.4, kappa = 2. Since H >= 0, psi lies in
  [0, |A|/kappa]: it is ADDED whatever the sign of A. For A > 0 it enlarges A; for A < 0 it shrinks |A| by at
  most |A|/kappa (< |A| for kappa > 1), so A' stays negative: the sign never flips; A = 0 gives psi = 0.
  The reference computes H from the current forward pass in the update (detached).
* Entropy-Driven Advantage (EDGE-GRPO, arXiv 2507.21848, signal level only, no guided error correction):
  P_i = masked mean token entropy of response i, P^_i = P_i / mean_group(P), A'_i = A_i / P^_i: confident
  (low-entropy) responses get larger |A|, uncertain ones smaller. Normaliser: the group mean by default;
  "batch" uses the mean over the batch (the reference code divides by the mean over the whole gathered
  batch, with an unmasked mean over padded positions, current-policy entropy).
* Forking Tokens only (wang2025beyond, arXiv 2506.01939): the gradient flows only through the top-rho
  (rho = 20 %) highest-entropy tokens of the batch; the others are masked out of the loss but, as in the
  paper's objective (normalised by the total token count of the batch), still count in the denominator.

Global statistics (the "batch" of FORK's threshold and of EDGE's "batch" normaliser is the whole rollout
batch, spread over data-parallel ranks): this module never communicates, so it offers the pieces a
trainer reduces (SUM) over ranks and the functions that finish from the reduced values:
  * EDGE "batch": `response_entropy_stats` -> all-reduce -> `batch_mean_entropy_from_stats`;
  * FORK threshold, EXACTLY the k-th largest entropy of all ranks' valid tokens, by a two-round radix
    select on the float32 bit pattern: `valid_token_count` -> all-reduce -> k = `forking_k`; then twice
    `radix_histogram` -> all-reduce -> `radix_step`; finally `radix_value`. `global_forking_threshold`
    runs these steps with a caller-supplied SUM reducer (identity on one rank).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from policy_split_megatron.algorithms.aggregation import aggregate_loss
from policy_split_megatron.algorithms.common import as_bool_mask, dense_group_index, group_mean_std, masked_mean

EDA_NORMALIZERS = ("group", "batch")


def entropy_bonus_loss(
    entropy: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    coef: float,
    agg_mode: str,
    global_denominator,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The term to ADD to the loss: -coef * agg(H) (maximising entropy). `entropy` keeps its gradient."""
    agg_entropy = aggregate_loss(entropy, response_mask, agg_mode, global_denominator)
    return -coef * agg_entropy, {"entropy_coef": torch.tensor(float(coef)),
                                 "entropy": masked_mean(entropy.detach(), response_mask)}


def entropy_shaped_advantages(
    advantages: torch.Tensor,
    entropy: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    alpha: float = 0.4,
    kappa: float = 2.0,
) -> torch.Tensor:
    """Entropy Advantage (arXiv 2506.14758): A + min(alpha * H.detach(), |A| / kappa); padding gets 0."""
    adv = advantages.unsqueeze(-1).expand_as(entropy) if advantages.dim() == 1 else advantages
    psi = torch.minimum(alpha * entropy.detach(), adv.abs() / kappa)
    out = adv + psi
    return torch.where(as_bool_mask(response_mask), out, torch.zeros_like(out))


def response_mean_entropy(entropy: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """P_i: masked mean token entropy of each response [B]."""
    return masked_mean(entropy.detach().float(), as_bool_mask(response_mask), dim=-1)


def entropy_driven_advantages(
    advantages: torch.Tensor,
    entropy: torch.Tensor,
    response_mask: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    normalizer: str = "group",
    batch_mean_entropy: float | torch.Tensor | None = None,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """EDGE-GRPO entropy-driven advantage [B]: A_i * (mean P + eps) / (P_i + eps).

    normalizer="group": mean over the response's GRPO group (pass whole groups);
    "batch": mean over the responses given, or `batch_mean_entropy` when the caller has a global one.
    eps keeps a fully confident response (P_i = 0) finite; it is negligible otherwise.
    """
    if normalizer not in EDA_NORMALIZERS:
        raise ValueError(f"normalizer must be one of {EDA_NORMALIZERS}, got {normalizer!r}")
    p = response_mean_entropy(entropy, response_mask).to(torch.float64)
    has_tokens = as_bool_mask(response_mask).any(-1)
    if normalizer == "group":
        index, num_groups = dense_group_index(group_ids)
        mean, _, _ = group_mean_std(p, index, num_groups, has_tokens.to(p.dtype), unbiased=False)
        norm = mean[index]
    elif batch_mean_entropy is not None:
        norm = torch.as_tensor(batch_mean_entropy, dtype=p.dtype, device=p.device).expand_as(p)
    else:
        norm = masked_mean(p, has_tokens).expand_as(p)
    scale = (norm + eps) / (p + eps)
    out = advantages.to(torch.float64) * scale
    return out.to(advantages.dtype), {"eda_scale_mean": scale.mean().float(), "eda_entropy_mean": p.mean().float()}


def forking_token_mask(
    entropy: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    top_fraction: float = 0.2,
    threshold: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(bool mask of the high-entropy "forking" tokens, threshold used).

    Threshold = the k-th largest entropy among the N valid tokens, k = ceil(top_fraction * N); tokens with
    H >= threshold are kept (ties at the threshold are all kept). Pass `threshold` to use one computed
    elsewhere (e.g. over the whole data-parallel batch).
    """
    m = as_bool_mask(response_mask)
    h = entropy.detach().float()
    if threshold is None:
        valid = h[m]
        if valid.numel() == 0:
            return torch.zeros_like(m), torch.tensor(float("inf"))
        # 1e-9 keeps float products such as 0.3 * 10 = 3.0000000000000004 from rounding up to 4.
        k = max(1, math.ceil(top_fraction * valid.numel() - 1e-9))
        threshold = torch.topk(valid, k, largest=True).values[-1]
    threshold = torch.as_tensor(threshold, dtype=h.dtype, device=h.device)
    return m & (h >= threshold), threshold


# -- global statistics (reduced by the caller over data-parallel ranks) ---------------------------------

RADIX_BITS = 16  # two rounds of 2**16 bins cover the 32 bits of a float32
_RADIX_BINS = 1 << RADIX_BITS


def response_entropy_stats(entropy: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """float64 [sum of P_i, number of responses with tokens] of this rank's responses (all-reduce SUM)."""
    has_tokens = as_bool_mask(response_mask).any(-1)
    p = response_mean_entropy(entropy, response_mask).to(torch.float64)
    return torch.stack([torch.where(has_tokens, p, torch.zeros_like(p)).sum(), has_tokens.sum().to(torch.float64)])


def batch_mean_entropy_from_stats(stats: torch.Tensor) -> torch.Tensor:
    """EDGE's "batch" normaliser, mean P over the responses of all ranks, from reduced response_entropy_stats."""
    return stats[0] / stats[1].clamp(min=1)


def valid_token_count(response_mask: torch.Tensor) -> torch.Tensor:
    """float64 [1]: this rank's valid tokens (all-reduce SUM, then `forking_k`)."""
    return as_bool_mask(response_mask).sum().to(torch.float64).reshape(1)


def forking_k(total_tokens: int | float | torch.Tensor, top_fraction: float) -> int:
    """k = ceil(top_fraction * N) over the N valid tokens of the whole batch (0 when N = 0), as forking_token_mask."""
    n = int(torch.as_tensor(total_tokens).reshape(-1)[0])
    return 0 if n == 0 else max(1, math.ceil(top_fraction * n - 1e-9))


def _sortable_keys(values: torch.Tensor) -> torch.Tensor:
    """float32 -> int64 keys in [0, 2**32) whose integer order is the float order."""
    bits = values.detach().float().contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    negative = (bits & 0x80000000) != 0
    return torch.where(negative, (~bits) & 0xFFFFFFFF, bits | 0x80000000)


def radix_histogram(values: torch.Tensor, response_mask: torch.Tensor, high_bin: int | None = None) -> torch.Tensor:
    """int64 [2**16] histogram of this rank's valid values (all-reduce SUM). Round 1 (high_bin None): by the
    high 16 bits of the key; round 2: by the low 16 bits, over the values whose high bits are `high_bin`."""
    keys = _sortable_keys(values)[as_bool_mask(response_mask)]
    if high_bin is None:
        bins = keys >> RADIX_BITS
    else:
        bins = (keys & (_RADIX_BINS - 1))[(keys >> RADIX_BITS) == high_bin]
    return torch.bincount(bins, minlength=_RADIX_BINS).to(torch.int64)


def radix_step(histogram: torch.Tensor, k: int) -> tuple[int, int]:
    """(bin holding the k-th largest counted value, its rank k' inside that bin) from a reduced histogram."""
    from_top = histogram.flip(0).cumsum(0)  # from_top[j] = count in bins >= (2**16 - 1 - j)
    if k < 1 or k > int(from_top[-1]):
        raise ValueError(f"k = {k} is outside 1..{int(from_top[-1])} counted values")
    j = int(torch.searchsorted(from_top, torch.tensor(k, dtype=from_top.dtype, device=from_top.device)))
    above = int(from_top[j - 1]) if j > 0 else 0
    return _RADIX_BINS - 1 - j, k - above


def radix_value(high_bin: int, low_bin: int) -> torch.Tensor:
    """The float32 whose key is (high_bin << 16) | low_bin (inverse of the key map)."""
    key = (high_bin << RADIX_BITS) | low_bin
    bits = key & 0x7FFFFFFF if key & 0x80000000 else (~key) & 0xFFFFFFFF
    return torch.tensor([bits - (1 << 32) if bits >= (1 << 31) else bits], dtype=torch.int32).view(torch.float32)[0]


def global_forking_threshold(
    entropy: torch.Tensor,
    response_mask: torch.Tensor,
    top_fraction: float,
    all_reduce_sum: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
) -> torch.Tensor:
    """The Forking-Tokens threshold over the valid tokens of EVERY rank: the exact k-th largest entropy,
    k = ceil(top_fraction * N). `all_reduce_sum(t)` must return t summed over the data-parallel ranks (every
    rank calls this function: three reductions). +inf when no rank has a token (nothing is kept)."""
    k = forking_k(all_reduce_sum(valid_token_count(response_mask)), top_fraction)
    if k == 0:
        return torch.tensor(float("inf"))
    high, k_low = radix_step(all_reduce_sum(radix_histogram(entropy, response_mask)), k)
    low, _ = radix_step(all_reduce_sum(radix_histogram(entropy, response_mask, high)), k_low)
    return radix_value(high, low)
