"""From scored samples to the tensors of one update: rows, old log-probs, advantages, metrics.

Every algorithm goes through the same rows: `build_quarters` (Policy Split's Eq. 10 rows, built by
concatenating token ids). Policy Split trains all four quarters; the baselines sample the normal
mode only and train its rows under the normal conditioning (Q1), and they pay only for those:
the other rows are dropped BEFORE any log-prob pass.

The rows are built on the host; per-token tensors cross to the engine's device once
(`_on_device`) and stay there: old/reference/teacher log-probs come back from the engine on its
device, advantages are computed there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from policy_split_megatron.algorithms import RolloutBatch, compute_advantages, requirements
from policy_split_megatron.algorithms import entropy_baselines as eb
from policy_split_megatron.algorithms import rollout_correction as rc
from policy_split_megatron.algorithms.config import AlgorithmConfig
from policy_split_megatron.algorithms.modes import HIGH_ENTROPY, MODE_NAMES, NORMAL
from policy_split_megatron.algorithms.policy_split import QuarterBatch, build_quarters, inter_mode_kl
from policy_split_megatron.engine import PolicyEngine, score_rows
from policy_split_megatron.engine.collectives import dp_max, dp_sum, dp_weighted_means
from policy_split_megatron.metrics.diversity import entropy_bits
from policy_split_megatron.rollout import DualModePrompt, Sample
from policy_split_megatron.trainer.update import UpdateBatch, mini_batch_of_prompts


@dataclass
class PreparedStep:
    update: UpdateBatch
    metrics: dict[str, float]


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
    """(mean over the mask, number of tokens): a metric and its weight for dp_weighted_means."""
    mask = mask.float()
    tokens = mask.sum()
    return float((values * mask).sum() / tokens.clamp(min=1)), float(tokens)


def _on_device(rows: QuarterBatch, device: torch.device) -> QuarterBatch:
    """The per-row and per-token tensors the advantages and losses use, on `device`."""
    moved = {f: getattr(rows, f).to(device) for f in ("response_mask", "conditioning_mode", "source_mode",
                                                      "group_ids", "partner_index", "prompt_lengths",
                                                      "response_lengths")}
    if rows.rewards is not None:
        moved["rewards"] = rows.rewards.to(device)
    elif len(rows) == 0:  # a rank without prompts this step: it still takes part in every collective
        moved["rewards"] = torch.zeros(0, device=device)
    return QuarterBatch(**{**rows.__dict__, **moved})


def prepare_step(
    engine: PolicyEngine,
    cfg: AlgorithmConfig,
    prompts: list[DualModePrompt],
    samples: list[Sample],
    *,
    pad_token_id: int,
    token_budget: int,
    num_prompts: int,
    mini_batches: int = 1,
    max_tokens: dict[int, int] | None = None,
    reference: PolicyEngine | None = None,
    teachers: list[PolicyEngine] = (),
) -> PreparedStep:
    """Rows, pi_old log-probs/entropies, advantages and the per-mode rollout metrics of this
    data-parallel rank's prompts (whole groups: every sample of a prompt is here).

    `num_prompts`: prompts of the whole step (DualModePrompt.index is in [0, num_prompts)), which
    places each row in its mini-batch. `max_tokens`: the rollout's generation limit per mode (DAPO's
    soft overlong penalty). `reference` (frozen, trainer/reference.py): its log-probs
    become `UpdateBatch.ref_log_probs` when the reference KL is on; for ERPD stage 2 it is the base
    and its log-probs ARE pi_old (never re-anchored to the current policy). `teachers`: ERPD stage
    2's frozen teachers."""
    local = {p.index: i for i, p in enumerate(prompts)}
    samples = [
        Sample(**{**s.__dict__, "prompt_index": local[s.prompt_index]}) for s in samples if s.prompt_index in local
    ]
    rows = build_quarters(
        [p.normal_ids for p in prompts], [p.explore_ids for p in prompts], samples, pad_token_id=pad_token_id
    )
    if cfg.name != "policy_split":
        rows = rows.select(torch.nonzero(rows.conditioning_mode == NORMAL).squeeze(-1))
    lengths = rows.prompt_lengths + rows.response_lengths
    global_prompt = torch.tensor([prompts[i].index for i in rows.prompt_index.tolist()], dtype=torch.long)
    # What the engine knew of each row's response: its own log-prob of every sampled token (the
    # behaviour policy of the rollout correction) and whether it stopped at its length limit.
    engine_logp = rc.scatter_sample_values([s.logprobs for s in samples], rows.response_mask, rows.sample_index)
    truncated = torch.tensor([samples[i].finish_reason == "length" for i in rows.sample_index.tolist()])
    limit = None if max_tokens is None else torch.tensor([max_tokens[int(m)] for m in rows.source_mode.tolist()])
    rows = _on_device(rows, engine.device)
    engine_logp = engine_logp.to(engine.device)

    def score(model: PolicyEngine) -> tuple[torch.Tensor, torch.Tensor]:
        return score_rows(model, rows.input_ids, lengths, token_budget=token_budget)

    old_logp, old_entropy = score(engine)
    metrics = rollout_metrics(rows, old_logp, old_entropy)  # (value, weight) pairs, reduced at the end
    mismatch = mismatch_metrics(rows, old_logp, engine_logp)  # already reduced over DP
    need = requirements(cfg)
    stage2 = cfg.name == "erpd" and cfg.erpd.stage == 2
    ref_logp = None
    if need.ref_log_probs or stage2:
        if reference is None:
            raise ValueError(f"algorithm {cfg.name!r} needs the reference policy: pass prepare_step(reference=...)")
        ref_logp = score(reference)[0]
        metrics["reference/kl_k1_old"] = _masked_mean(old_logp - ref_logp, rows.response_mask)
    teacher_logp = None
    if need.teacher_log_probs:
        if not teachers:
            raise ValueError("ERPD stage 2 needs at least one teacher: pass prepare_step(teachers=[...])")
        teacher_logp = [score(t)[0] for t in teachers]
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
            engine_log_probs=engine_logp if need.engine_log_probs else None,
            truncated=truncated.to(engine.device) if need.truncated else None,
            max_response_length=None if limit is None else limit.to(engine.device),
            forking_threshold=(eb.global_forking_threshold(old_entropy, rows.response_mask,
                                                           cfg.forking_tokens.top_fraction, dp_sum)
                               if need.forking_threshold else None),
            batch_mean_entropy=(eb.batch_mean_entropy_from_stats(dp_sum(eb.response_entropy_stats(
                old_entropy, rows.response_mask))) if need.batch_mean_entropy else None),
        ),
    )
    # each rank's value weighted by what it averages over (default: its response tokens): whole-batch means
    tokens = float(rows.response_mask.sum())
    metrics.update({f"advantage/{k}": (float(v), float(adv.metric_weights.get(k, tokens)))
                    for k, v in adv.metrics.items() if torch.as_tensor(v).numel() == 1})
    update = UpdateBatch(
        input_ids=rows.input_ids,
        lengths=lengths,
        old_log_probs=old_logp,
        advantages=adv.advantages,
        response_mask=adv.response_mask,
        gradient_mask=adv.gradient_mask,
        ref_log_probs=ref_logp if need.ref_log_probs else None,
        rollout_weights=adv.rollout_weights,
        mini_batch=mini_batch_of_prompts(global_prompt, num_prompts, mini_batches),
    )
    return PreparedStep(update, {**reduce_step_metrics(metrics), **mismatch})


def mismatch_metrics(rows: QuarterBatch, old_logp: torch.Tensor, engine_logp: torch.Tensor) -> dict[str, float]:
    """Per generating mode, on the rows scored under the conditioning that generated them: how far the
    trainer's pi_old is from the engine's sampling probabilities (mean and max |log ratio|, k3 KL,
    fraction of tokens with |log ratio| > 0.5), over all data-parallel ranks. Logged every step,
    whether or not the correction is on."""
    out: dict[str, float] = {}
    stats = rc.mismatch_stats_by_mode(old_logp, engine_logp, rows.response_mask, rows.conditioning_mode,
                                      rows.source_mode)
    for mode, (sums, top) in stats.items():
        sums, top = dp_sum(sums), dp_max(top)
        if float(sums[3]) > 0:
            out.update(rc.mismatch_metrics_from_stats(sums, top, prefix=f"{mode}/rollout_mismatch/"))
    return out


def rollout_metrics(rows: QuarterBatch, old_logp: torch.Tensor, old_entropy: torch.Tensor) -> dict[str, float]:
    """Per generating mode, on each response's OWN conditioning: reward, length, mean
    full-vocabulary token entropy in bits (as the paper reports it); and the two inter-mode KLs on
    the same responses (KL(normal||HE) on normal rollouts, KL(HE||normal) on HE rollouts), when
    the rows hold both conditionings (Policy Split). (value, weight) pairs of this rank's rows:
    `reduce_step_metrics` makes them whole-batch means."""
    pairs: dict[str, tuple[float, float]] = {}
    own = rows.conditioning_mode == rows.source_mode
    for mode in (NORMAL, HIGH_ENTROPY):
        sel = own & (rows.source_mode == mode)
        count = int(sel.sum())
        if not count:
            continue
        name = MODE_NAMES[mode]
        pairs[f"{name}/reward"] = (float(rows.rewards[sel].mean()), count)
        pairs[f"{name}/response_length"] = (float(rows.response_lengths[sel].float().mean()), count)
        pairs[f"{name}/entropy_nats"] = _masked_mean(old_entropy[sel], rows.response_mask[sel])
    both_conditionings = bool((rows.conditioning_mode != rows.source_mode).any())
    if both_conditionings and bool((rows.source_mode == HIGH_ENTROPY).any()) and bool((rows.source_mode == NORMAL).any()):
        kl = inter_mode_kl(old_logp, rows.response_mask, rows.conditioning_mode, rows.source_mode, rows.partner_index)
        for key, mode in (("kl_normal_he", NORMAL), ("kl_he_normal", HIGH_ENTROPY)):
            pairs[f"inter_mode/{key}"] = (float(kl[key]), int((own & (rows.source_mode == mode)).sum()))
    return pairs


def reduce_step_metrics(pairs: dict[str, tuple[float, float]]) -> dict[str, float]:
    """Weighted means over all data-parallel ranks (collective), token entropies in bits."""
    out = dp_weighted_means(pairs)
    for name in MODE_NAMES.values():
        if f"{name}/entropy_nats" in out:
            out[f"{name}/entropy_bits"] = entropy_bits(out.pop(f"{name}/entropy_nats"))
    return out
