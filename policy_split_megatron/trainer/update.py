"""The optimizer updates of one RL step: epochs x mini-batches, each one `PolicyEngine.train_step`.

Mini-batches are assigned by prompt over the WHOLE step (prompt i of P goes to mini-batch
floor(i * k / P)), so every data-parallel rank makes the same k optimizer steps whatever its share
of the prompts, and the union of mini-batch j over the ranks is the same set of rows at any DP
size. A rank with no rows in a mini-batch still runs the schedule with a zero-weight placeholder
micro-batch (its peers wait in the gradient reduction). Loss normalisation is megatron-core's
(engine/schedule.py): each micro-batch returns its loss numerator and its share of the
denominator, and the gradient is divided by the global count, so the update is invariant to
micro-batching, DP size and PP size.

Metrics are sums over micro-batches and data-parallel ranks (one reduction per RL step): loss
terms as numerators over the global count (like the loss), token counts as totals, per-token
means weighted by their micro-batch's tokens. Every rank logs the same whole-batch values.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

from policy_split_megatron.algorithms import MicroBatch, compute_loss, loss_denominator, requirements
from policy_split_megatron.algorithms.config import AlgorithmConfig
from policy_split_megatron.algorithms.covariance import centering_means_from_stats, covariance_centering_stats
from policy_split_megatron.engine import Pack, PolicyEngine, dummy_pack, pack_batch, score_rows
from policy_split_megatron.engine.collectives import agreed_keys, dp_sum, sum_reports


@dataclass
class UpdateBatch:
    """The rows this data-parallel rank trains on in one step, right-padded to a common width."""

    input_ids: torch.Tensor  # [B, L]
    lengths: torch.Tensor  # [B] prompt + response tokens
    old_log_probs: torch.Tensor  # [B, L] aligned with input_ids (see engine/packing.py)
    advantages: torch.Tensor  # [B, L]
    response_mask: torch.Tensor  # [B, L] bool
    gradient_mask: torch.Tensor | None = None  # [B, L] bool (Forking Tokens)
    ref_log_probs: torch.Tensor | None = None  # [B, L] frozen reference policy (ppo.kl_coef > 0)
    rollout_weights: torch.Tensor | None = None  # [B, L] truncated IS weights of the rollout correction
    mini_batch: torch.Tensor | None = None  # [B] long: the mini-batch of each row (None: all in 0)

    def to(self, device: torch.device) -> "UpdateBatch":
        """Per-token tensors on `device` (the one device boundary of the update); token ids,
        lengths and mini-batch indices stay on the host, where micro-batches are planned."""
        host = ("input_ids", "lengths", "mini_batch")
        return replace(self, **{f.name: getattr(self, f.name).to(device) for f in fields(self)
                                if f.name not in host and getattr(self, f.name) is not None})


def mini_batch_of_prompts(prompt_indices: torch.Tensor, num_prompts: int, mini_batches: int) -> torch.Tensor:
    """Mini-batch of each prompt index in [0, num_prompts): contiguous, as even as possible."""
    return torch.div(prompt_indices * mini_batches, max(num_prompts, 1), rounding_mode="floor")


def _global_centering_means(engine: PolicyEngine, batch: UpdateBatch, rows: torch.Tensor, token_budget: int):
    """Clip-Cov/KL-Cov centering="global": (mean A, mean log pi) over the valid tokens of the whole
    mini-batch on all data-parallel ranks. log pi is the CURRENT policy's (what the losses see: the
    parameters do not change within a mini-batch), from one extra forward-only pass."""
    logp, _ = score_rows(engine, batch.input_ids[rows], batch.lengths[rows], token_budget=token_budget)
    stats = covariance_centering_stats(batch.advantages[rows.to(logp.device)], logp,
                                       batch.response_mask[rows.to(logp.device)])
    return centering_means_from_stats(dp_sum(stats))


class _LossOfMicroBatch:
    """`loss_fn` for the engine: the algorithm's loss numerator on one pack, its share of the
    denominator, and token-weighted metric sums."""

    def __init__(self, cfg: AlgorithmConfig, batch: UpdateBatch, *, step: int, generator, centering_means):
        self.cfg, self.batch, self.step, self.generator, self.means = cfg, batch, step, generator, centering_means
        self.needs_entropy = requirements(cfg).current_entropy

    def __call__(self, pack: Pack, log_probs: torch.Tensor, entropy: torch.Tensor):
        b = self.batch
        rows = lambda t: None if t is None else pack.gather_rows(t)  # noqa: E731
        mask = rows(b.response_mask)
        numerator, metrics = compute_loss(
            self.cfg,
            MicroBatch(log_probs=log_probs, old_log_probs=rows(b.old_log_probs), advantages=rows(b.advantages),
                       response_mask=mask, gradient_mask=rows(b.gradient_mask),
                       entropy=entropy if self.needs_entropy else entropy.detach(), ref_log_probs=rows(b.ref_log_probs),
                       rollout_weights=rows(b.rollout_weights)),
            global_denominator=1.0, step=self.step, generator=self.generator, centering_means=self.means)
        count = loss_denominator(self.cfg, mask)
        tokens = mask.sum().to(torch.float64)
        report = {"numerator/loss": numerator.detach(), "count/loss": count, "count/tokens": tokens}
        for key, value in metrics.items():
            value = torch.as_tensor(value).detach().to(torch.float64)
            if value.numel() != 1:
                continue
            if key.endswith("_loss"):  # aggregated like the loss: numerators over the global count
                report[f"numerator/{key}"] = value
            elif key.endswith("tokens"):  # counts add up
                report[f"count/{key}"] = value
            else:  # per-token means of this micro-batch: token-weighted
                report[f"mean/{key}"] = value * tokens
        return numerator, count.round().to(torch.int), report


def policy_update(
    engine: PolicyEngine,
    batch: UpdateBatch,
    cfg: AlgorithmConfig,
    *,
    epochs: int,
    mini_batches: int,
    micro_batch_tokens: int,
    step: int,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """Run the updates; return whole-batch metrics (loss, loss terms, clip fractions) and the mean
    gradient norm, identical on every rank."""
    need = requirements(cfg)
    if need.ref_log_probs and batch.ref_log_probs is None:
        raise ValueError(f"algorithm {cfg.name!r} with ppo.kl_coef > 0 needs UpdateBatch.ref_log_probs")
    assignment = batch.mini_batch if batch.mini_batch is not None else torch.zeros(len(batch.lengths), dtype=torch.long)
    on_device = batch.to(engine.device)
    reports: list[dict] = []
    norms: list[float] = []
    for _ in range(epochs):
        for j in range(mini_batches):
            rows = torch.nonzero(assignment == j).squeeze(-1)
            packs = (pack_batch(batch.input_ids, batch.lengths, micro_batch_tokens, engine.alignment, rows=rows.tolist())
                     if rows.numel() else [dummy_pack(engine.alignment)])
            means = (_global_centering_means(engine, on_device, rows, micro_batch_tokens)
                     if need.centering_means else None)
            loss_fn = _LossOfMicroBatch(cfg, on_device, step=step, generator=generator, centering_means=means)
            norm, mine = engine.train_step([p.to(engine.device) for p in packs], loss_fn, step_index=step)
            norms.append(norm)
            reports.extend(mine)
    keys = agreed_keys(k for r in reports for k in r)
    totals = sum_reports(reports, keys)
    tokens, count = max(totals["count/tokens"], 1.0), max(totals["count/loss"], 1.0)
    metrics = {}
    for key, value in totals.items():
        kind, name = key.split("/", 1)
        metrics[name] = value / count if kind == "numerator" else value / tokens if kind == "mean" else value
    metrics.pop("loss", None)
    metrics["loss"] = totals["numerator/loss"] / count
    metrics["grad_norm"] = sum(norms) / len(norms)
    metrics["lr"] = engine.learning_rate
    return metrics
