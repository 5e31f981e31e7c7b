"""The optimizer updates of one RL step: epochs x mini-batches x micro-batches.

Loss normalisation does not depend on micro-batching or the data-parallel size: every micro-batch
loss is divided by the mini-batch's GLOBAL denominator (its valid tokens or sequences summed over
micro-batches and all-reduced over data-parallel ranks), and gradients are summed (see
algorithms/aggregation.py and model/grads.py).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from policy_split_megatron.algorithms import MicroBatch, compute_loss, loss_denominator, requirements
from policy_split_megatron.algorithms.config import AlgorithmConfig
from policy_split_megatron.algorithms.covariance import centering_means_from_stats, covariance_centering_stats
from policy_split_megatron.model import ModelArchitecture
from policy_split_megatron.trainer.forward import plan_micro_batches, token_logprobs
from policy_split_megatron.trainer.optimizer import PolicyOptimizer


@dataclass
class UpdateBatch:
    """The rows this data-parallel rank trains on in one step, right-padded to a common width."""

    input_ids: torch.Tensor  # [B, L]
    lengths: torch.Tensor  # [B] prompt + response tokens
    old_log_probs: torch.Tensor  # [B, L] aligned with input_ids (see trainer/forward.py)
    advantages: torch.Tensor  # [B, L]
    response_mask: torch.Tensor  # [B, L] bool
    gradient_mask: torch.Tensor | None = None  # [B, L] bool (Forking Tokens)
    ref_log_probs: torch.Tensor | None = None  # [B, L] frozen reference policy (ppo.kl_coef > 0)


def _dp_sum(value: torch.Tensor) -> torch.Tensor:
    if parallel_state.get_data_parallel_world_size() > 1:
        dist.all_reduce(value, group=parallel_state.get_data_parallel_group())
    return value


def global_centering_means(
    model: torch.nn.Module,
    arch: ModelArchitecture,
    batch: UpdateBatch,
    micro: list[torch.Tensor],
    *,
    temperature: float,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clip-Cov/KL-Cov centering="global": (mean A, mean log pi) over the valid tokens of the whole
    mini-batch (`micro`: its micro-batches on this rank) and all data-parallel ranks. log pi is the
    CURRENT policy's, which is what the micro-batch losses see: the parameters do not change within
    a mini-batch, so a no-grad forward pass before the losses gives the same values (one extra forward
    per mini-batch is the cost)."""
    stats = torch.zeros(3, dtype=torch.float64)
    with torch.no_grad():
        for m in micro:
            width = int(batch.lengths[m].max())
            logp, _ = token_logprobs(model, arch, batch.input_ids[m, :width], temperature=temperature,
                                     chunk_size=chunk_size)
            stats += covariance_centering_stats(batch.advantages[m, :width], logp,
                                                batch.response_mask[m, :width]).cpu()
    return centering_means_from_stats(_dp_sum(stats))


def policy_update(
    model: torch.nn.Module,
    arch: ModelArchitecture,
    optimizer: PolicyOptimizer,
    batch: UpdateBatch,
    cfg: AlgorithmConfig,
    *,
    epochs: int,
    mini_batches: int,
    micro_batch_tokens: int,
    temperature: float,
    chunk_size: int,
    step: int,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """Run the updates; return mean metrics (loss terms, clip fractions, grad norm)."""
    need = requirements(cfg)
    needs_entropy = need.current_entropy
    if need.ref_log_probs and batch.ref_log_probs is None:
        raise ValueError(f"algorithm {cfg.name!r} with ppo.kl_coef > 0 needs UpdateBatch.ref_log_probs")
    rows = batch.input_ids.shape[0]
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for _ in range(epochs):
        for mini in torch.arange(rows).chunk(mini_batches):
            micro = [mini[torch.tensor(m)] for m in plan_micro_batches(batch.lengths[mini].tolist(), micro_batch_tokens)]
            denominator = sum(loss_denominator(cfg, batch.response_mask[m]) for m in micro)
            denominator = _dp_sum(torch.as_tensor(denominator, dtype=torch.float64).clone())
            means = (global_centering_means(model, arch, batch, micro, temperature=temperature, chunk_size=chunk_size)
                     if need.centering_means else None)
            for m in micro:
                width = int(batch.lengths[m].max())
                logp, entropy = token_logprobs(
                    model, arch, batch.input_ids[m, :width], temperature=temperature, chunk_size=chunk_size
                )
                gradient_mask = None if batch.gradient_mask is None else batch.gradient_mask[m, :width]
                loss, metrics = compute_loss(
                    cfg,
                    MicroBatch(
                        log_probs=logp,
                        old_log_probs=batch.old_log_probs[m, :width],
                        advantages=batch.advantages[m, :width],
                        response_mask=batch.response_mask[m, :width],
                        gradient_mask=gradient_mask,
                        entropy=entropy if needs_entropy else entropy.detach(),
                        ref_log_probs=None if batch.ref_log_probs is None else batch.ref_log_probs[m, :width],
                    ),
                    global_denominator=denominator,
                    step=step,
                    generator=generator,
                    centering_means=means,
                )
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"step {step}: the {cfg.name} loss is {loss.item()} on a micro-batch of {len(m)} rows; "
                        "the update was skipped and no checkpoint is written from this state"
                    )
                loss.backward()
                for key, value in metrics.items():
                    sums[key] += float(value)
                    counts[key] += 1
            sums["grad_norm"] += optimizer.step(step_index=step)
            counts["grad_norm"] += 1
    return {key: sums[key] / counts[key] for key in sums}
