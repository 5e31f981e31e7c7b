"""Loss aggregation over tokens and sequences, normalised by a GLOBAL denominator.

Modes keep verl's meaning (verl `agg_loss`):
  * "token-mean":          sum of all valid token losses / number of valid tokens;
  * "seq-mean-token-mean": mean over sequences of each sequence's token mean;
  * "seq-mean-token-sum":  mean over sequences of each sequence's token sum;
  * "seq-mean-token-sum-norm": mean over sequences of each sequence's token sum divided by a CONSTANT
    length L (Dr. GRPO, arXiv 2503.20783 §3.1 and its code: L = the generation budget), so that neither a
    sequence's length nor the batch's token count rescales a token's gradient.

"token-mean" is DAPO's token-level policy-gradient loss (arXiv 2503.14476, Eq. 12): the sum over all
tokens of all sequences divided by the total token count, here of the whole mini-batch.

The "number of tokens" / "number of sequences" is the GLOBAL count of the whole mini-batch: every
micro-batch on every data-parallel rank divides by the same number. Then

    sum over micro-batches and DP ranks of aggregate_loss(...) == aggregate_loss(full mini-batch),

so the gradient does not depend on how the mini-batch is cut. The trainer must SUM (not average) the
gradients over micro-batches and DP ranks; with a DDP that averages over ranks, multiply the loss by the
DP size. How to get the denominator:

    d = sum(local_loss_denominator(mb.response_mask, mode) for mb in micro_batches)   # this rank
    all_reduce(d, SUM over the data-parallel group)                                    # trainer's job

"seq-mean-*" count sequences with at least one valid token (verl does the same since it masks empty
sequences): an all-padding row neither adds loss nor counts.
"""

from __future__ import annotations

import torch

from policy_split_megatron.algorithms.common import as_bool_mask, masked_mean, masked_sum

LOSS_AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
NORMALISED_MODE = "seq-mean-token-sum-norm"


def _check_mode(mode: str) -> None:
    if mode not in LOSS_AGG_MODES:
        raise ValueError(f"loss_agg_mode must be one of {LOSS_AGG_MODES}, got {mode!r}")


def local_loss_denominator(response_mask: torch.Tensor, mode: str, norm_length: int | None = None) -> torch.Tensor:
    """This micro-batch's contribution to the global denominator (float64 scalar, to be all-reduced).

    "seq-mean-token-sum-norm" folds its constant L into the denominator (sequences x L), so that
    `aggregate_loss` only sums token losses: `norm_length` (L) is required for that mode only.
    """
    _check_mode(mode)
    m = as_bool_mask(response_mask)
    if mode == "token-mean":
        return m.sum().to(torch.float64)
    sequences = m.any(dim=-1).sum().to(torch.float64)
    if mode == NORMALISED_MODE:
        if norm_length is None or norm_length <= 0:
            raise ValueError(f"loss_agg_mode={NORMALISED_MODE!r} needs a positive norm_length (Dr. GRPO's constant, "
                             f"e.g. the maximum response length), got {norm_length!r}")
        return sequences * float(norm_length)
    return sequences


def aggregate_loss(
    per_token_loss: torch.Tensor,
    response_mask: torch.Tensor,
    mode: str,
    global_denominator: float | torch.Tensor,
) -> torch.Tensor:
    """Reduce a [B, T] per-token loss to this micro-batch's share of the mini-batch loss.

    `response_mask` decides which tokens exist (and, for "seq-mean-token-mean", each sequence's length);
    tokens that must not carry gradient but still count (Clip-Cov, Forking Tokens) should be zeroed in
    `per_token_loss` by the caller, not removed from the mask. A non-positive global denominator means
    the whole mini-batch holds no token: the loss is then an exact zero that still has a graph.
    """
    _check_mode(mode)
    m = as_bool_mask(response_mask)
    denom = torch.as_tensor(global_denominator, dtype=per_token_loss.dtype, device=per_token_loss.device)
    if mode == "token-mean":
        numerator = masked_sum(per_token_loss, m)
    elif mode == "seq-mean-token-mean":
        numerator = masked_mean(per_token_loss, m, dim=-1).sum()  # empty rows give 0 (masked_mean)
    else:  # token sums; "-norm" has its constant L inside the denominator (local_loss_denominator)
        numerator = masked_sum(per_token_loss, m, dim=-1).sum()
    # No host sync on the denominator: a zero denominator selects a zero loss (with a finite gradient).
    positive = denom > 0
    return numerator / torch.where(positive, denom, torch.ones_like(denom)) * positive.to(numerator.dtype)
