"""Policy Split (arXiv 2604.11510): rollout sharing into four quarters and the HE-mode advantage.

Rollout sharing (Eq. 10): every response, whichever mode generated it, is trained twice: under the normal
conditioning with the GRPO advantage A (Eq. 2) and under the HE conditioning with Ã (Eq. 3-6):

    quarter  conditioning  response (source mode)  advantage
    Q1       normal        normal rollout o         A
    Q2       HE            HE rollout o^HE          Ã
    Q3       normal        HE rollout o^HE          A
    Q4       HE            normal rollout o         Ã

Groups are JOINT: all G = n_normal + n_explore responses of a prompt form one group, both for A and for the
token-level z-score of b (Eq. 4); rows of the two conditionings are kept apart (the authors' code gives
Q1/Q3 one uid and Q2/Q4 another), which only matters for Eq. 4 since rewards do not depend on conditioning.

Quarters are built by concatenating token ids, never by decoding and re-encoding (the authors' code
re-tokenises Q3/Q4, which drops the EOS and wraps the HE prompt inside a user turn; we do neither).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Sequence

import torch

from policy_split_megatron.algorithms.advantages import broadcast_to_tokens, grpo_advantages
from policy_split_megatron.algorithms.common import (
    as_bool_mask,
    dense_group_index,
    gather_from_partner,
    group_mean_std,
    masked_mean,
    seq_mean_token_mean,
    kl_per_token,
)
from policy_split_megatron.algorithms.modes import HIGH_ENTROPY, MODES, NORMAL

CLAMP_ORDERS = ("paper", "reference_code")
ENTROPY_ESTIMATES = ("logprob", "entropy")


@dataclass
class RolloutSample:
    """One generated response. `mode` is the mode that GENERATED it (NORMAL or HIGH_ENTROPY)."""

    prompt_index: int
    mode: int
    response_ids: Sequence[int]  # exactly as sampled, EOS included when the engine stopped on it
    reward: float | None = None


@dataclass
class QuarterBatch:
    """2*S rows for S samples: row s is sample s under the normal conditioning (Q1 or Q3), row S + s is
    sample s under the HE conditioning (Q4 or Q2). All tensors are right-padded with `pad_token_id`.

    `response_mask` marks the positions of the response tokens inside `input_ids`; a log-prob op that
    returns, at position t, the log-prob of input_ids[t] given input_ids[:t] is aligned with it as is
    (an op that returns the prediction for t+1 at t needs the mask shifted left by one).
    """

    input_ids: torch.Tensor  # [2S, L] long
    attention_mask: torch.Tensor  # [2S, L] bool: prompt + response
    response_mask: torch.Tensor  # [2S, L] bool
    conditioning_mode: torch.Tensor  # [2S] long: mode of the prompt the row is scored under
    source_mode: torch.Tensor  # [2S] long: mode that generated the response
    quarter: torch.Tensor  # [2S] long in 1..4 (table above)
    group_ids: torch.Tensor  # [2S] long
    prompt_index: torch.Tensor  # [2S] long
    sample_index: torch.Tensor  # [2S] long: index into the samples given to build_quarters
    partner_index: torch.Tensor  # [2S] long: the row with the same response under the other conditioning
    prompt_lengths: torch.Tensor  # [2S] long
    response_lengths: torch.Tensor  # [2S] long
    rewards: torch.Tensor | None = None  # [2S] float when every sample carried a reward

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def select(self, rows: torch.Tensor) -> "QuarterBatch":
        """Row subset (e.g. a micro-batch). partner_index keeps pointing into the FULL batch."""
        return QuarterBatch(**{f.name: (None if getattr(self, f.name) is None else getattr(self, f.name)[rows])
                               for f in fields(self)})


def build_quarters(
    normal_prompt_ids: Sequence[Sequence[int]],
    he_prompt_ids: Sequence[Sequence[int]],
    samples: Sequence[RolloutSample],
    *,
    pad_token_id: int,
    joint_groups: bool = True,
    n_normal: int | None = None,
    n_explore: int | None = None,
) -> QuarterBatch:
    """Rows Q1..Q4 of Eq. 10 from prompt ids of both modes and the responses of both modes.

    joint_groups=True (paper/code): one group per (prompt, conditioning) holding the responses of both
    modes. False: one group per (prompt, conditioning, source mode), an ablation with per-mode groups.
    n_normal / n_explore, when given, are checked against the number of responses of each prompt and mode.
    """
    if len(normal_prompt_ids) != len(he_prompt_ids):
        raise ValueError("normal_prompt_ids and he_prompt_ids must list the same prompts")
    num_prompts = len(normal_prompt_ids)
    counts = torch.zeros(num_prompts, 2, dtype=torch.long)
    for sample in samples:
        if sample.mode not in MODES:
            raise ValueError(f"sample mode must be NORMAL or HIGH_ENTROPY, got {sample.mode!r}")
        if not 0 <= sample.prompt_index < num_prompts:
            raise ValueError(f"sample prompt_index {sample.prompt_index} outside 0..{num_prompts - 1}")
        if len(sample.response_ids) == 0:
            raise ValueError("empty response: every sample needs at least one response token")
        counts[sample.prompt_index, sample.mode] += 1
    for mode, expected, name in ((NORMAL, n_normal, "n_normal"), (HIGH_ENTROPY, n_explore, "n_explore")):
        if expected is not None and bool((counts[:, mode] != expected).any()):
            raise ValueError(f"every prompt must have {name}={expected} responses of that mode, "
                             f"got {counts[:, mode].tolist()}")

    rows = []  # (prompt ids, response ids, conditioning, sample)
    for conditioning in (NORMAL, HIGH_ENTROPY):
        prompts = normal_prompt_ids if conditioning == NORMAL else he_prompt_ids
        for s in samples:
            rows.append((list(prompts[s.prompt_index]), list(s.response_ids), conditioning, s))
    num_samples = len(samples)
    length = max((len(p) + len(r) for p, r, _, _ in rows), default=0)
    input_ids = torch.full((2 * num_samples, length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((2 * num_samples, length), dtype=torch.bool)
    response_mask = torch.zeros_like(attention_mask)
    for i, (prompt, response, _, _) in enumerate(rows):
        input_ids[i, : len(prompt) + len(response)] = torch.tensor(prompt + response, dtype=torch.long)
        attention_mask[i, : len(prompt) + len(response)] = True
        response_mask[i, len(prompt) : len(prompt) + len(response)] = True

    conditioning = torch.tensor([c for _, _, c, _ in rows], dtype=torch.long)
    source = torch.tensor([s.mode for _, _, _, s in rows], dtype=torch.long)
    prompt_index = torch.tensor([s.prompt_index for _, _, _, s in rows], dtype=torch.long)
    # Q1: (N, N), Q2: (HE, HE), Q3: (N cond, HE resp), Q4: (HE cond, N resp)
    quarter = torch.where(conditioning == source, 1 + conditioning, 3 + conditioning)
    group_ids = 2 * prompt_index + conditioning if joint_groups else 4 * prompt_index + 2 * conditioning + source
    rewards = None
    if num_samples and all(s.reward is not None for s in samples):
        rewards = torch.tensor([float(s.reward) for _, _, _, s in rows], dtype=torch.float32)
    ar = torch.arange(num_samples, dtype=torch.long)
    return QuarterBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        response_mask=response_mask,
        conditioning_mode=conditioning,
        source_mode=source,
        quarter=quarter,
        group_ids=group_ids,
        prompt_index=prompt_index,
        sample_index=torch.cat([ar, ar]),
        partner_index=torch.cat([ar + num_samples, ar]),
        prompt_lengths=torch.tensor([len(p) for p, _, _, _ in rows], dtype=torch.long),
        response_lengths=torch.tensor([len(r) for _, r, _, _ in rows], dtype=torch.long),
        rewards=rewards,
    )


def token_group_zscore(
    values: torch.Tensor,
    response_mask: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    unbiased: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Eq. 4: (b - mean) / (std + eps) over ALL valid tokens of ALL responses of each group.

    std is torch.std's unbiased estimator with eps = 1e-6, as the authors' code; a group with a single
    token gets 0. Padding gets 0.
    """
    m = as_bool_mask(response_mask)
    index, num_groups = dense_group_index(group_ids)
    token_index = index.unsqueeze(-1).expand_as(values)
    mean, std, _ = group_mean_std(values, token_index, num_groups, m.to(values.dtype), unbiased)
    z = (values.to(torch.float64) - mean[token_index]) / (std[token_index] + eps)
    return torch.where(m, z, torch.zeros_like(z)).to(values.dtype)


def dual_mode_bonus_signal(own: torch.Tensor, partner: torch.Tensor, alpha: float) -> torch.Tensor:
    """Eq. 6: b = alpha * s_own + (1 - alpha) * s_partner, s = surprisal -log pi (or full entropy).

    For an HE-conditioned row, own = HE conditioning and partner = normal conditioning, which is exactly
    b = -alpha log pi^HE - (1 - alpha) log pi. For a normal-conditioned row (eta' != 0) the roles swap:
    the mirrored quantity of the authors' code (B_org).
    """
    return alpha * own + (1.0 - alpha) * partner


def clamp_bonus(
    advantages: torch.Tensor, z: torch.Tensor, *, eta: float | torch.Tensor, kappa: float, clamp_order: str = "paper"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(bonus, clamp-binding mask) of Eq. 3.

    paper (Eq. 3):   eta * clip(B, -|A|/kappa, +|A|/kappa)   -> |bonus| <= eta |A| / kappa
    reference_code:  clip(eta * B, -|A|/kappa, +|A|/kappa)   -> |bonus| <= |A| / kappa
    kappa = 0 means no clamp (the authors' code default; the paper uses 2.0). With a clamp, A = 0 gives a
    zero bonus in both orders, so uniform-reward groups get no exploration signal. `eta` may be a tensor
    broadcastable to z (per-row coefficients).
    """
    if clamp_order not in CLAMP_ORDERS:
        raise ValueError(f"clamp_order must be one of {CLAMP_ORDERS}, got {clamp_order!r}")
    if kappa == 0:
        return eta * z, torch.zeros_like(z, dtype=torch.bool)
    bound = advantages.abs() / kappa
    inner = z if clamp_order == "paper" else eta * z
    clipped = torch.clamp(inner, min=-bound, max=bound)
    bonus = eta * clipped if clamp_order == "paper" else clipped
    return bonus, inner.abs() > bound


def policy_split_advantages(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    response_mask: torch.Tensor,
    conditioning_mode: torch.Tensor,
    partner_index: torch.Tensor,
    *,
    old_log_probs: torch.Tensor | None = None,
    old_entropy: torch.Tensor | None = None,
    eta: float = 0.03,
    eta_normal: float = 0.0,
    kappa: float = 2.0,
    alpha: float = 0.5,
    clamp_order: str = "paper",
    entropy_estimate: str = "logprob",
    zscore_unbiased: bool = True,
    zscore_eps: float = 1e-6,
    normalize_by_std: bool = True,
    adv_std_unbiased: bool = True,
    adv_eps: float = 1e-6,
    adv_estimator: str = "grpo",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Token-level advantages [N, T] for quarter rows: A on normal-conditioned rows, Ã on HE rows.

    rewards/group_ids/conditioning_mode/partner_index: [N]; response_mask, old_log_probs, old_entropy:
    [N, T]. The rows must contain whole groups and every row's partner. old_log_probs (detached, pi_old
    under each row's own conditioning) feed Eq. 6 when entropy_estimate="logprob"; old_entropy (full-
    vocabulary entropy per position) replaces -log pi when entropy_estimate="entropy".
    eta_normal (the paper's eta', §4.4): normal rows get A + eta' * clip(B_normal) with B_normal the mirrored
    z-score; eta' > 0 pushes the normal mode toward HIGHER entropy. (Authors' code: internal = eta1*B_he -
    eta2*B_org, i.e. eta2 = -eta'.) adv_estimator="rloo" replaces Eq. 2's A by the leave-one-out baseline
    over the same joint group (algorithms/advantages.py).
    """
    if entropy_estimate not in ENTROPY_ESTIMATES:
        raise ValueError(f"entropy_estimate must be one of {ENTROPY_ESTIMATES}, got {entropy_estimate!r}")
    m = as_bool_mask(response_mask)
    seq_adv = grpo_advantages(rewards, group_ids, normalize_by_std=normalize_by_std,
                              std_unbiased=adv_std_unbiased, eps=adv_eps, estimator=adv_estimator)
    adv = broadcast_to_tokens(seq_adv, m)
    he_rows = conditioning_mode == HIGH_ENTROPY
    he_tok = m & he_rows.unsqueeze(-1)
    normal_tok = m & ~he_rows.unsqueeze(-1)
    metrics: dict[str, torch.Tensor] = {"adv_abs_mean": masked_mean(adv.abs(), m)}
    if eta == 0.0 and eta_normal == 0.0:
        return adv, metrics

    source = old_entropy if entropy_estimate == "entropy" else old_log_probs
    if source is None:
        raise ValueError(f"entropy_estimate={entropy_estimate!r} needs "
                         f"{'old_entropy' if entropy_estimate == 'entropy' else 'old_log_probs'}")
    surprisal = source.detach().float() if entropy_estimate == "entropy" else -source.detach().float()
    b = dual_mode_bonus_signal(surprisal, gather_from_partner(surprisal, m, partner_index), alpha)
    # One z-score population per (group, conditioning), whatever ids the caller used.
    zgroups = 2 * dense_group_index(group_ids)[0] + he_rows.long()
    z = token_group_zscore(b, m, zgroups, unbiased=zscore_unbiased, eps=zscore_eps)
    # eta on HE-conditioned rows (Eq. 3), eta' on normal-conditioned rows (§4.4 ablation, default 0).
    coef = torch.where(he_rows, eta, eta_normal).unsqueeze(-1).to(adv.dtype)
    bonus, binds = clamp_bonus(adv, z, eta=coef, kappa=kappa, clamp_order=clamp_order)
    bonus = torch.where(m & (coef != 0), bonus, torch.zeros_like(bonus))
    metrics.update({
        "he_bonus_mean": masked_mean(bonus, he_tok),
        "he_bonus_abs_mean": masked_mean(bonus.abs(), he_tok),
        "he_clamp_frac": masked_mean(binds.float(), he_tok),
        "he_signal_b_mean": masked_mean(b, he_tok),
    })
    if eta_normal != 0.0:
        metrics["normal_bonus_mean"] = masked_mean(bonus, normal_tok)
    return adv + bonus, metrics


def inter_mode_kl(
    log_probs: torch.Tensor,
    response_mask: torch.Tensor,
    conditioning_mode: torch.Tensor,
    source_mode: torch.Tensor,
    partner_index: torch.Tensor,
    *,
    estimator: str = "k1",
) -> dict[str, torch.Tensor]:
    """Inter-mode KL on the sampled tokens (authors' `actor/org_he_kl`, `actor/he_org_kl`).

    kl_normal_he: KL(pi || pi^HE) on normal rollouts (Q1 vs Q4);
    kl_he_normal: KL(pi^HE || pi) on HE rollouts (Q2 vs Q3).
    Per-token estimator (k1 default), masked token mean per sequence, then mean over sequences.
    """
    m = as_bool_mask(response_mask)
    partner = gather_from_partner(log_probs.detach(), m, partner_index)
    kl = kl_per_token(log_probs.detach(), partner, estimator)
    out = {}
    for name, mode in (("kl_normal_he", NORMAL), ("kl_he_normal", HIGH_ENTROPY)):
        rows = (conditioning_mode == mode) & (source_mode == mode)
        out[name] = seq_mean_token_mean(kl, m & rows.unsqueeze(-1))
    return out
