"""Rollout/trainer mismatch: measured, and corrected by truncated importance sampling or by masking.

The engine (vLLM) samples token y_t with its own probability pi_engine(y_t); the trainer recomputes
pi_old(y_t) with other kernels and precision (FP8 rollouts widen the gap). Every policy-gradient estimator
here assumes the samples came from pi_old, so the update is biased by the ratio

    rho_t = pi_old(y_t) / pi_engine(y_t) = exp(delta_t),     delta_t = log pi_old(y_t) - log pi_engine(y_t).

Levels (aggregation of rho over a response i with tokens T_i):
    token:      rho_t                                       (per token)
    sequence:   rho_i = exp(sum_{t in T_i} delta_t)          (the importance weight of the whole response)
    geometric:  rho_i = exp(mean_{t in T_i} delta_t)         (length-normalised; "mask" mode only)
Modes:
    truncate (TIS):  w = min(rho, C), C = `cap` (default 2.0); every token keeps its gradient, weighted by w
                     (Yao et al. 2025, "Your efficient RL framework secretly brings you off-policy RL
                     training"; verl `rollout_is`, slime `--use-tis`).
    mask:            tokens (token level) or whole responses (sequence/geometric levels) whose rho leaves
                     [lower, upper] leave the loss AND its denominator; the others keep weight 1 (rejection,
                     verl `rollout_rs`, the "MIS"/IcePop family).
The weights are constants (no gradient) computed once per rollout batch (`compute_advantages`) and
multiplied into the policy-gradient term of every algorithm (`compute_loss`). When the engine's log-probs
equal the trainer's, rho = 1: w = 1 and nothing is masked, so the update is exactly the uncorrected one.
delta is clamped to ±20 nats before exp() (an overflow guard, as in the PPO ratio).

Policy Split (quarters Q3/Q4 train a response under the conditioning that did NOT generate it): the
engine sampled response o under its SOURCE mode m only, so the engine log-probs exist under m only.
Choice (docs/algorithms.md, "Rollout correction"): every row of o uses the mismatch ratio of its source
conditioning, rho = pi_old(o | cond = m) / pi_engine(o | cond = m), i.e. the ratio of its own row for Q1/Q2
and of its partner row for Q3/Q4 (`source_conditioned_log_probs`). The correction turns samples of
pi_engine^m into samples of pi_old^m, which is the distribution Policy Split's estimator assumes (Eq. 9-10);
the deliberate cross-conditioning of Q3/Q4 (no importance weight between the two modes, as in the paper)
is left as the method defines it. Both rows of a response therefore get the same weight and mask.

Metrics (`mismatch_stats` -> all-reduce -> `mismatch_metrics_from_stats`): mean |delta|, the k3 estimate of
KL(pi_engine || pi_old) on the engine's samples, the fraction of tokens with |delta| > 0.5, and max |delta|.
"""

from __future__ import annotations

from typing import Sequence

import torch

from policy_split_megatron.algorithms.common import as_bool_mask, gather_from_partner, kl_per_token, masked_mean
from policy_split_megatron.algorithms.modes import MODE_NAMES

CORRECTION_LEVELS = ("token", "sequence", "geometric")
CORRECTION_MODES = ("truncate", "mask")
LARGE_DELTA = 0.5  # |log pi_old - log pi_engine| above which a token counts as badly mismatched (metric)
_LOG_RATIO_CLAMP = 20.0


def scatter_sample_values(
    per_sample: Sequence[Sequence[float]] | Sequence[torch.Tensor],
    response_mask: torch.Tensor,
    sample_index: torch.Tensor,
    *,
    fill: float = 0.0,
) -> torch.Tensor:
    """[N, T]: the values of sample sample_index[r] (e.g. the engine's log-prob of each response token)
    written at row r's response positions. Works for QuarterBatch rows (both rows of a sample) and for
    any row subset of them; each sample must give exactly one value per response token."""
    m = as_bool_mask(response_mask)
    out = torch.full(m.shape, fill, dtype=torch.float32)
    for row, sample in enumerate(sample_index.tolist()):
        values = torch.as_tensor(per_sample[sample], dtype=torch.float32).reshape(-1)
        if values.numel() != int(m[row].sum()):
            raise ValueError(f"sample {sample} has {values.numel()} values for {int(m[row].sum())} response tokens "
                             f"(row {row}): the engine must return one log-prob per sampled token")
        out[row, m[row]] = values
    return out.to(response_mask.device)


def source_conditioned_log_probs(
    old_log_probs: torch.Tensor,
    response_mask: torch.Tensor,
    conditioning_mode: torch.Tensor | None = None,
    source_mode: torch.Tensor | None = None,
    partner_index: torch.Tensor | None = None,
) -> torch.Tensor:
    """[N, T] pi_old of each row's response under the conditioning that GENERATED it: the row's own
    log-probs for Q1/Q2 (conditioning == source) and its partner row's for Q3/Q4. Without quarter fields
    (baselines: every row is its sample's own conditioning) the old log-probs are returned unchanged."""
    if conditioning_mode is None or source_mode is None:
        return old_log_probs
    cross = conditioning_mode != source_mode
    if not bool(cross.any()):
        return old_log_probs
    if partner_index is None:
        raise ValueError("cross-conditioned rows (Q3/Q4) need partner_index to find their source-conditioned row")
    partner = gather_from_partner(old_log_probs, response_mask, partner_index)
    return torch.where(cross.unsqueeze(-1), partner, old_log_probs)


def _level_log_ratio(delta: torch.Tensor, mask: torch.Tensor, level: str) -> torch.Tensor:
    if level == "token":
        return delta
    summed = torch.where(mask, delta, torch.zeros_like(delta)).sum(-1, keepdim=True)
    if level == "geometric":
        summed = summed / mask.sum(-1, keepdim=True).clamp(min=1)
    return summed.expand_as(delta)


def correction_weights(
    behaviour_log_probs: torch.Tensor,
    engine_log_probs: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    level: str = "token",
    mode: str = "truncate",
    cap: float = 2.0,
    lower: float = 0.5,
    upper: float = 2.0,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """(weights [N, T] float32, kept mask [N, T] bool, metrics) from pi_old and pi_engine of the sampled tokens.

    `behaviour_log_probs`: pi_old under the generating conditioning (`source_conditioned_log_probs`).
    truncate: w = min(rho, cap), kept = response_mask. mask: w = 1, kept = response_mask & (lower <= rho <= upper)
    (rho at `level`). Padding gets weight 1 and is never kept.
    """
    if level not in CORRECTION_LEVELS:
        raise ValueError(f"rollout correction level must be one of {CORRECTION_LEVELS}, got {level!r}")
    if mode not in CORRECTION_MODES:
        raise ValueError(f"rollout correction mode must be one of {CORRECTION_MODES}, got {mode!r}")
    if mode == "truncate" and level == "geometric":
        raise ValueError("the geometric level is a rejection criterion: use it with mode='mask'")
    m = as_bool_mask(response_mask)
    delta = (behaviour_log_probs.detach().double() - engine_log_probs.detach().double())
    delta = torch.where(m, delta, torch.zeros_like(delta))
    log_rho = _level_log_ratio(delta, m, level).clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
    rho = torch.exp(log_rho)
    if mode == "truncate":
        weights = torch.where(m, rho.clamp(max=cap), torch.ones_like(rho))
        kept = m
    else:
        kept = m & (rho >= lower) & (rho <= upper)
        weights = torch.ones_like(rho)
    metrics = {
        "rollout_corr/weight_mean": masked_mean(weights.float(), kept),
        "rollout_corr/truncated_frac": masked_mean((rho > cap).float(), m) if mode == "truncate"
        else torch.tensor(0.0),
        "rollout_corr/masked_frac": masked_mean((m & ~kept).float(), m),
    }
    return weights.float(), kept, metrics


def mismatch_stats(
    old_log_probs: torch.Tensor, engine_log_probs: torch.Tensor, response_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sums, max) of this rank's tokens: sums = float64 [sum |delta|, sum k3, count |delta| > 0.5, count]
    (all-reduce SUM), max = float64 [max |delta|] (all-reduce MAX; 0 without tokens).

    k3 estimates KL(pi_engine || pi_old) from the engine's samples: exp(d) - 1 - d, d = log pi_old - log pi_engine.
    """
    m = as_bool_mask(response_mask)
    old = old_log_probs.detach().double()
    engine = engine_log_probs.detach().double()
    delta = torch.where(m, old - engine, torch.zeros_like(old))
    k3 = torch.where(m, kl_per_token(engine, old, "k3"), torch.zeros_like(old))
    abs_delta = delta.abs()
    sums = torch.stack([abs_delta.sum(), k3.sum(), (m & (abs_delta > LARGE_DELTA)).sum().double(), m.sum().double()])
    top = abs_delta.max().reshape(1) if abs_delta.numel() else torch.zeros(1, dtype=torch.float64)
    return sums, top


def mismatch_metrics_from_stats(sums: torch.Tensor, top: torch.Tensor, prefix: str = "") -> dict[str, float]:
    """The logged metrics from (all-reduced) `mismatch_stats`."""
    count = float(sums[3].clamp(min=1))
    return {
        f"{prefix}abs_log_ratio_mean": float(sums[0]) / count,
        f"{prefix}kl_k3": float(sums[1]) / count,
        f"{prefix}frac_abs_log_ratio_gt_{LARGE_DELTA}": float(sums[2]) / count,
        f"{prefix}abs_log_ratio_max": float(top.reshape(-1)[0]),
    }


def mismatch_stats_by_mode(
    old_log_probs: torch.Tensor,
    engine_log_probs: torch.Tensor,
    response_mask: torch.Tensor,
    conditioning_mode: torch.Tensor,
    source_mode: torch.Tensor,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{mode name: mismatch_stats} over the rows scored under the conditioning that generated them (Q1 for
    the normal mode, Q2 for the HE mode): the only rows where the engine and the trainer saw the same prompt.
    Every mode is always present (zero stats when it has no row here), so every rank all-reduces the same keys."""
    m = as_bool_mask(response_mask)
    out = {}
    for mode, name in MODE_NAMES.items():
        rows = (conditioning_mode == mode) & (source_mode == mode)
        out[name] = mismatch_stats(old_log_probs, engine_log_probs, m & rows.unsqueeze(-1))
    return out
