"""From scored samples to the tensors of one update: rows, old log-probs, advantages, metrics.

Every algorithm goes through the same rows: `build_quarters` (Policy Split's Eq. 10 rows, built by
concatenating token ids). Policy Split trains all four quarters; the baselines sample the normal
mode only and train its rows under the normal conditioning (Q1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from policy_split_megatron.algorithms import RolloutBatch, compute_advantages, requirements
from policy_split_megatron.algorithms.config import AlgorithmConfig
from policy_split_megatron.algorithms.modes import HIGH_ENTROPY, MODE_NAMES, NORMAL
from policy_split_megatron.algorithms.policy_split import QuarterBatch, build_quarters, inter_mode_kl
from policy_split_megatron.metrics.diversity import entropy_bits
from policy_split_megatron.model import ModelArchitecture
from policy_split_megatron.rollout import DualModePrompt, Sample
from policy_split_megatron.trainer.forward import batched_token_logprobs
from policy_split_megatron.trainer.update import UpdateBatch


@dataclass
class PreparedStep:
    update: UpdateBatch
    metrics: dict[str, float]


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    mask = mask.float()
    return float((values * mask).sum() / mask.sum().clamp(min=1))


def prepare_step(
    model: torch.nn.Module,
    arch: ModelArchitecture,
    cfg: AlgorithmConfig,
    prompts: list[DualModePrompt],
    samples: list[Sample],
    *,
    pad_token_id: int,
    temperature: float,
    token_budget: int,
    chunk_size: int,
    reference: torch.nn.Module | None = None,
    teachers: list[torch.nn.Module] = (),
) -> PreparedStep:
    """Rows, pi_old log-probs/entropies, advantages and the per-mode rollout metrics of this
    data-parallel rank's prompts (whole groups: every sample of a prompt is here).

    `reference` (frozen, trainer/reference.py): its log-probs become `UpdateBatch.ref_log_probs` when
    the reference KL is on; for ERPD stage 2 it is the base and its log-probs ARE pi_old (never
    re-anchored to the current policy). `teachers`: ERPD stage 2's frozen teachers."""
    local = {p.index: i for i, p in enumerate(prompts)}
    samples = [
        Sample(**{**s.__dict__, "prompt_index": local[s.prompt_index]}) for s in samples if s.prompt_index in local
    ]
    rows = build_quarters(
        [p.normal_ids for p in prompts], [p.explore_ids for p in prompts], samples, pad_token_id=pad_token_id
    )
    lengths = rows.prompt_lengths + rows.response_lengths
    old_logp, old_entropy = batched_token_logprobs(
        model, arch, rows.input_ids, lengths, token_budget=token_budget, temperature=temperature, chunk_size=chunk_size
    )
    metrics = rollout_metrics(rows, old_logp, old_entropy)
    need = requirements(cfg)
    stage2 = cfg.name == "erpd" and cfg.erpd.stage == 2
    if cfg.name != "policy_split":
        keep = torch.nonzero(rows.conditioning_mode == NORMAL).squeeze(-1)
        rows, old_logp, old_entropy, lengths = rows.select(keep), old_logp[keep], old_entropy[keep], lengths[keep]

    def score(frozen: torch.nn.Module) -> torch.Tensor:  # same micro-batching as the old log-probs
        return batched_token_logprobs(frozen, arch, rows.input_ids, lengths, token_budget=token_budget,
                                      temperature=temperature, chunk_size=chunk_size)[0]

    ref_logp = None
    if need.ref_log_probs or stage2:
        if reference is None:
            raise ValueError(f"algorithm {cfg.name!r} needs the reference policy: pass prepare_step(reference=...)")
        ref_logp = score(reference)
        metrics["reference/kl_k1_old"] = _masked_mean(old_logp - ref_logp, rows.response_mask)
    teacher_logp = None
    if need.teacher_log_probs:
        if not teachers:
            raise ValueError("ERPD stage 2 needs at least one teacher: pass prepare_step(teachers=[...])")
        teacher_logp = [score(t) for t in teachers]
        for i, t in enumerate(teacher_logp):
            metrics[f"erpd/teacher{i}_abs_log_ratio_to_policy"] = _masked_mean((t - old_logp).abs(), rows.response_mask)
            metrics[f"erpd/teacher{i}_abs_log_ratio_to_base"] = _masked_mean((t - ref_logp).abs(), rows.response_mask)
    if stage2:
        old_logp = ref_logp  # stage 2's pi_old is the frozen base (registry.MicroBatch), not the current policy
    adv = compute_advantages(
        cfg,
        RolloutBatch(
            rewards=rows.rewards,
            group_ids=rows.group_ids,
            response_mask=rows.response_mask,
            old_log_probs=old_logp,
            old_entropy=old_entropy if need.old_entropy else None,
            conditioning_mode=rows.conditioning_mode if need.quarters else None,
            source_mode=rows.source_mode if need.quarters else None,
            partner_index=rows.partner_index if need.quarters else None,
            teacher_log_probs=teacher_logp,
        ),
    )
    metrics.update({f"advantage/{k}": float(v) for k, v in adv.metrics.items() if torch.as_tensor(v).numel() == 1})
    update = UpdateBatch(
        input_ids=rows.input_ids,
        lengths=lengths,
        old_log_probs=old_logp,
        advantages=adv.advantages,
        response_mask=adv.response_mask,
        gradient_mask=adv.gradient_mask,
        ref_log_probs=ref_logp if need.ref_log_probs else None,
    )
    return PreparedStep(update, metrics)


def rollout_metrics(rows: QuarterBatch, old_logp: torch.Tensor, old_entropy: torch.Tensor) -> dict[str, float]:
    """Per generating mode, on each response's OWN conditioning: reward, length, mean
    full-vocabulary token entropy in bits (as the paper reports it); and the two inter-mode KLs on
    the same responses (KL(normal||HE) on normal rollouts, KL(HE||normal) on HE rollouts)."""
    out: dict[str, float] = {}
    own = rows.conditioning_mode == rows.source_mode
    for mode in (NORMAL, HIGH_ENTROPY):
        sel = own & (rows.source_mode == mode)
        if not bool(sel.any()):
            continue
        name = MODE_NAMES[mode]
        out[f"{name}/reward"] = float(rows.rewards[sel].mean())
        out[f"{name}/response_length"] = float(rows.response_lengths[sel].float().mean())
        out[f"{name}/entropy_bits"] = entropy_bits(_masked_mean(old_entropy[sel], rows.response_mask[sel]))
    if bool((rows.source_mode == HIGH_ENTROPY).any()) and bool((rows.source_mode == NORMAL).any()):
        kl = inter_mode_kl(old_logp, rows.response_mask, rows.conditioning_mode, rows.source_mode, rows.partner_index)
        out.update({f"inter_mode/{k}": float(v) for k, v in kl.items()})
    return out
