"""Policy Split (arXiv 2604.11510): quarters, joint groups, Ã (Eq. 3-6), clamp orders, η=0 == GRPO."""

import math

import pytest
import torch

from policy_split_megatron.algorithms import AlgorithmConfig, MicroBatch, RolloutBatch, compute_advantages, compute_loss
from policy_split_megatron.algorithms.common import gather_from_partner
from policy_split_megatron.algorithms.config import PolicySplitConfig
from policy_split_megatron.algorithms.modes import HIGH_ENTROPY as HE
from policy_split_megatron.algorithms.modes import NORMAL as N
from policy_split_megatron.algorithms.policy_split import (
    RolloutSample,
    build_quarters,
    clamp_bonus,
    inter_mode_kl,
    policy_split_advantages,
    token_group_zscore,
)

EOS = 99
PAD = 0


def _samples():
    # prompt 0: two normal responses (rewards 1, 0) and two HE responses (rewards 1, 1); prompt 1: one each.
    return [
        RolloutSample(0, N, [1, 2, EOS], 1.0),
        RolloutSample(0, N, [3, EOS], 0.0),
        RolloutSample(0, HE, [4, 5, 6, EOS], 1.0),
        RolloutSample(0, HE, [7, EOS], 1.0),
        RolloutSample(1, N, [8, EOS], 0.0),
        RolloutSample(1, HE, [9, 9, EOS], 1.0),
    ]


NORMAL_PROMPTS = [[10, 11], [12]]
HE_PROMPTS = [[20, 21, 22], [23, 24]]


def _qb(**kw):
    return build_quarters(NORMAL_PROMPTS, HE_PROMPTS, _samples(), pad_token_id=PAD, **kw)


def test_quarters_have_identical_responses_including_eos_and_the_right_prompts():
    qb = _qb()
    samples = _samples()
    s = len(samples)
    assert len(qb) == 2 * s
    for i in range(2 * s):
        sample = samples[qb.sample_index[i]]
        ids = qb.input_ids[i]
        response = ids[qb.response_mask[i]].tolist()
        assert response == sample.response_ids and response[-1] == EOS
        partner = qb.partner_index[i]
        assert qb.input_ids[partner][qb.response_mask[partner]].tolist() == response
        assert qb.conditioning_mode[partner] != qb.conditioning_mode[i]
        plen = int(qb.prompt_lengths[i])
        prompts = NORMAL_PROMPTS if qb.conditioning_mode[i] == N else HE_PROMPTS
        assert ids[:plen].tolist() == prompts[sample.prompt_index]
        # right padding after prompt + response, nothing else
        assert ids[plen + len(response):].tolist() == [PAD] * (ids.numel() - plen - len(response))
        assert qb.attention_mask[i].sum() == plen + len(response)
    # quarter table: Q1 (N cond, N resp), Q2 (HE, HE), Q3 (N cond, HE resp), Q4 (HE cond, N resp)
    assert qb.quarter.tolist() == [1, 1, 3, 3, 1, 3, 4, 4, 2, 2, 4, 2]
    assert qb.source_mode.tolist() == [N, N, HE, HE, N, HE] * 2
    assert qb.rewards.tolist() == [1.0, 0.0, 1.0, 1.0, 0.0, 1.0] * 2


def test_groups_are_joint_over_both_modes_and_split_by_conditioning():
    qb = _qb()
    g = qb.group_ids.tolist()
    # prompt 0 normal-conditioned rows (Q1 and Q3 of both modes) share one id; HE-conditioned another.
    assert len({g[0], g[1], g[2], g[3]}) == 1 and len({g[6], g[7], g[8], g[9]}) == 1
    assert len({g[0], g[6], g[4], g[10]}) == 4
    per_mode = _qb(joint_groups=False).group_ids.tolist()
    assert per_mode[0] == per_mode[1] and per_mode[2] == per_mode[3] and per_mode[0] != per_mode[2]


def test_build_quarters_checks_mode_counts():
    build_quarters(NORMAL_PROMPTS[:1], HE_PROMPTS[:1], _samples()[:4], pad_token_id=PAD, n_normal=2, n_explore=2)
    with pytest.raises(ValueError, match="n_explore=3"):
        build_quarters(NORMAL_PROMPTS[:1], HE_PROMPTS[:1], _samples()[:4], pad_token_id=PAD, n_normal=2, n_explore=3)


def test_joint_group_advantage_mixes_modes():
    qb = _qb()
    adv, _ = policy_split_advantages(qb.rewards, qb.group_ids, qb.response_mask, qb.conditioning_mode,
                                     qb.partner_index, eta=0.0)
    # prompt 0 joint group rewards [1, 0, 1, 1]: mean 0.75, unbiased var = (3*0.25^2 + 0.75^2)/3 = 0.25,
    # std 0.5 -> A = 0.25/0.5 = 0.5 for correct, -0.75/0.5 = -1.5 for the wrong one.
    # prompt 1 rewards [0, 1]: mean 0.5, std sqrt(0.5) -> A = -/+ 0.5/0.70711 = -/+ 0.70711.
    seq = torch.stack([adv[i][qb.response_mask[i]][0] for i in range(len(qb))])
    expected = torch.tensor([0.5, -1.5, 0.5, 0.5, -0.5 / math.sqrt(0.5), 0.5 / math.sqrt(0.5)])
    torch.testing.assert_close(seq, torch.cat([expected, expected]), atol=1e-5, rtol=0)
    # per-mode groups would have given prompt 0's HE responses A = 0 (both correct): joint ones do not.
    assert (seq[2:4] > 0).all()


def _one_token_batch():
    """One prompt, 4 one-token responses (2 normal rewards [1, 0], 2 HE rewards [1, 1]), with old log-probs."""
    samples = [RolloutSample(0, N, [EOS], 1.0), RolloutSample(0, N, [EOS], 0.0),
               RolloutSample(0, HE, [EOS], 1.0), RolloutSample(0, HE, [EOS], 1.0)]
    qb = build_quarters([[10]], [[20, 21]], samples, pad_token_id=PAD)
    old = torch.zeros(qb.input_ids.shape)
    # rows 0-3 normal conditioning: log pi = -2 for every response; rows 4-7 HE: log pi^HE = -1, -2, -3, -4
    old[qb.response_mask] = torch.tensor([-2.0, -2.0, -2.0, -2.0, -1.0, -2.0, -3.0, -4.0])
    return qb, old


def test_he_advantage_hand_computed_both_clamp_orders():
    qb, old = _one_token_batch()
    # A (joint group [1, 0, 1, 1]) = [0.5, -1.5, 0.5, 0.5]
    # Eq. 6 on HE rows: b = 0.5 * (-log pi^HE) + 0.5 * (-log pi) = 0.5*[1,2,3,4] + 0.5*2 = [1.5, 2, 2.5, 3]
    # Eq. 4: mean 2.25, unbiased std = sqrt((0.75^2*2 + 0.25^2*2)/3) = sqrt(1.25/3) = 0.645497
    std = math.sqrt(1.25 / 3)
    big, small = 0.75 / (std + 1e-6), 0.25 / (std + 1e-6)  # 1.161895, 0.387298
    z = torch.tensor([-big, -small, small, big])
    A = torch.tensor([0.25, -0.75, 0.25, 0.25]) / (0.5 + 1e-6)  # (r - 0.75) / (std 0.5 + eps 1e-6)
    # paper (Eq. 3): eta * clip(B, +-|A|/2): bounds ~[0.25, 0.75, 0.25, 0.25] -> clip(B) = [-.25, -.3873, .25, .25]
    paper = A + 0.03 * torch.tensor([-A[0] / 2, -small, A[2] / 2, A[3] / 2])
    # reference code: clip(eta * B, +-|A|/2): |eta*B| <= 0.0349 never reaches the bounds -> A + eta * B
    reference = A + 0.03 * z
    for order, expected in (("paper", paper), ("reference_code", reference)):
        adv, metrics = policy_split_advantages(
            qb.rewards, qb.group_ids, qb.response_mask, qb.conditioning_mode, qb.partner_index,
            old_log_probs=old, eta=0.03, kappa=2.0, alpha=0.5, clamp_order=order)
        tok = adv[qb.response_mask]
        torch.testing.assert_close(tok[:4], A, atol=1e-6, rtol=0)  # normal conditioning: plain A
        torch.testing.assert_close(tok[4:], expected, atol=1e-6, rtol=0)
    # The orders agree on the token whose |B| = 0.387 < |A|/kappa = 0.75, and differ on the others.
    assert abs(paper[1] - reference[1]) < 1e-7 and (paper[[0, 2, 3]] - reference[[0, 2, 3]]).abs().min() > 0.004


def test_clamp_orders_bind_exactly_where_they_should():
    A, kappa = torch.tensor([1.0]), 2.0  # bound |A|/kappa = 0.5
    # paper binds, reference does not: B = 1, eta = 0.03 -> paper 0.03*clip(1, .5) = 0.015; ref clip(0.03) = 0.03
    p, p_bind = clamp_bonus(A, torch.tensor([1.0]), eta=0.03, kappa=kappa, clamp_order="paper")
    r, r_bind = clamp_bonus(A, torch.tensor([1.0]), eta=0.03, kappa=kappa, clamp_order="reference_code")
    assert p.item() == pytest.approx(0.015) and r.item() == pytest.approx(0.03) and p_bind.item() and not r_bind.item()
    # reference binds, paper does not (needs eta > 1): B = 0.4, eta = 2 -> paper 2*0.4 = 0.8; ref clip(0.8, .5) = 0.5
    p, p_bind = clamp_bonus(A, torch.tensor([0.4]), eta=2.0, kappa=kappa, clamp_order="paper")
    r, r_bind = clamp_bonus(A, torch.tensor([0.4]), eta=2.0, kappa=kappa, clamp_order="reference_code")
    assert p.item() == pytest.approx(0.8) and r.item() == pytest.approx(0.5) and r_bind.item() and not p_bind.item()
    # they agree when neither binds: B = -0.2 -> -0.006 both
    p, _ = clamp_bonus(A, torch.tensor([-0.2]), eta=0.03, kappa=kappa, clamp_order="paper")
    r, _ = clamp_bonus(A, torch.tensor([-0.2]), eta=0.03, kappa=kappa, clamp_order="reference_code")
    assert p.item() == pytest.approx(-0.006) and r.item() == pytest.approx(-0.006)
    # kappa = 0: no clamp at all
    p, _ = clamp_bonus(torch.tensor([0.0]), torch.tensor([3.0]), eta=0.03, kappa=0.0)
    assert p.item() == pytest.approx(0.09)


def test_uniform_reward_group_gives_zero_advantage_and_zero_bonus():
    qb, old = _one_token_batch()
    ones = torch.ones_like(qb.rewards)
    for order in ("paper", "reference_code"):
        adv, _ = policy_split_advantages(ones, qb.group_ids, qb.response_mask, qb.conditioning_mode,
                                         qb.partner_index, old_log_probs=old, eta=0.03, kappa=2.0, clamp_order=order)
        assert torch.count_nonzero(adv) == 0
    # without a clamp (kappa = 0, the authors' code default) the bonus survives on a uniform group
    adv, _ = policy_split_advantages(ones, qb.group_ids, qb.response_mask, qb.conditioning_mode,
                                     qb.partner_index, old_log_probs=old, eta=0.03, kappa=0.0)
    assert adv[qb.response_mask][4:].abs().min() > 0.01


def test_eta_prime_mirrors_the_bonus_onto_normal_rows():
    qb, old = _one_token_batch()
    adv, _ = policy_split_advantages(qb.rewards, qb.group_ids, qb.response_mask, qb.conditioning_mode,
                                     qb.partner_index, old_log_probs=old, eta=0.0, eta_normal=0.1, kappa=2.0)
    # normal rows: b = 0.5*(-log pi)[own = 2] + 0.5*(-log pi^HE)[partner = 1..4] = [1.5, 2, 2.5, 3]: same B
    std = math.sqrt(1.25 / 3)
    small = 0.25 / (std + 1e-6)
    tok = adv[qb.response_mask]
    A = torch.tensor([0.25, -0.75, 0.25, 0.25]) / (0.5 + 1e-6)
    torch.testing.assert_close(tok[:4], A + 0.1 * torch.tensor([-A[0] / 2, -small, A[2] / 2, A[3] / 2]), atol=1e-6, rtol=0)
    torch.testing.assert_close(tok[4:], A)  # eta = 0: HE rows keep A


def test_eq4_zscore_runs_over_all_tokens_of_the_group_not_per_sequence():
    values = torch.tensor([[1.0, 3.0, 0.0], [5.0, 0.0, 0.0], [2.0, 2.0, 8.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1]], dtype=torch.bool)
    groups = torch.tensor([7, 7, 3])
    z = token_group_zscore(values, mask, groups)
    # group 7 tokens {1, 3, 5}: mean 3, unbiased std 2 -> z = -1, 0, 1 (eps 1e-6 in the denominator)
    # group 3 tokens {2, 2, 8}: mean 4, unbiased std sqrt((4+4+16)/2) = sqrt(12)
    s12 = math.sqrt(12) + 1e-6
    expected = torch.tensor([[-2 / 2.000001, 0.0, 0.0], [2 / 2.000001, 0.0, 0.0], [-2 / s12, -2 / s12, 4 / s12]])
    torch.testing.assert_close(z, expected)


def test_partner_alignment_across_different_prompt_lengths():
    qb = _qb()
    x = torch.arange(qb.input_ids.numel(), dtype=torch.float32).reshape(qb.input_ids.shape)
    aligned = gather_from_partner(x, qb.response_mask, qb.partner_index)
    for i in range(len(qb)):
        p = qb.partner_index[i]
        assert aligned[i][qb.response_mask[i]].tolist() == x[p][qb.response_mask[p]].tolist()
        assert (aligned[i][~qb.response_mask[i]] == 0).all()


def test_entropy_estimate_uses_full_vocab_entropies():
    qb, old = _one_token_batch()
    entropy = -old  # the same numbers as surprisals -> the same advantages as the logprob estimate
    a1, _ = policy_split_advantages(qb.rewards, qb.group_ids, qb.response_mask, qb.conditioning_mode,
                                    qb.partner_index, old_log_probs=old, eta=0.03)
    a2, _ = policy_split_advantages(qb.rewards, qb.group_ids, qb.response_mask, qb.conditioning_mode,
                                    qb.partner_index, old_log_probs=torch.zeros_like(old), old_entropy=entropy,
                                    eta=0.03, entropy_estimate="entropy")
    torch.testing.assert_close(a1, a2)


def test_eta_zero_reduces_policy_split_to_grpo_on_the_four_quarters():
    qb = _qb()
    g = torch.Generator().manual_seed(0)
    old = -torch.rand(qb.input_ids.shape, generator=g) * 3
    batch = RolloutBatch(rewards=qb.rewards, group_ids=qb.group_ids, response_mask=qb.response_mask,
                         old_log_probs=old, conditioning_mode=qb.conditioning_mode,
                         source_mode=qb.source_mode, partner_index=qb.partner_index)
    ps = compute_advantages(AlgorithmConfig(name="policy_split", policy_split=PolicySplitConfig(eta=0.0)), batch)
    grpo = compute_advantages(AlgorithmConfig(name="grpo"), batch)
    torch.testing.assert_close(ps.advantages, grpo.advantages, rtol=0, atol=0)
    ps_eta = compute_advantages(AlgorithmConfig(name="policy_split"), batch)
    assert not torch.equal(ps_eta.advantages, grpo.advantages)  # the default eta does change Ã

    logits = (old + 0.1 * torch.randn(old.shape, generator=g)).requires_grad_(True)
    losses = []
    for cfg, adv in ((AlgorithmConfig(name="policy_split", policy_split=PolicySplitConfig(eta=0.0)), ps),
                     (AlgorithmConfig(name="grpo"), grpo)):
        mb = MicroBatch(log_probs=logits, old_log_probs=old, advantages=adv.advantages, response_mask=adv.response_mask)
        loss, _ = compute_loss(cfg, mb, global_denominator=qb.response_mask.sum())
        (grad,) = torch.autograd.grad(loss, logits)
        losses.append((loss.detach(), grad))
    torch.testing.assert_close(losses[0][0], losses[1][0], rtol=0, atol=0)
    torch.testing.assert_close(losses[0][1], losses[1][1], rtol=0, atol=0)


def test_inter_mode_kl_is_token_mean_then_sequence_mean():
    samples = [RolloutSample(0, N, [1, 2, EOS]), RolloutSample(0, HE, [3, EOS])]
    qb = build_quarters([[10]], [[20, 21]], samples, pad_token_id=PAD)
    lp = torch.zeros(qb.input_ids.shape)
    # rows: 0 = Q1, 1 = Q3, 2 = Q4, 3 = Q2
    lp[qb.response_mask] = torch.tensor([-1.0, -1.0, -1.0,   # Q1: log pi(o)
                                         -2.0, -2.0,         # Q3: log pi(o^HE)
                                         -1.5, -3.0, -1.0,   # Q4: log pi^HE(o)
                                         -1.0, -0.5])        # Q2: log pi^HE(o^HE)
    kl = inter_mode_kl(lp, qb.response_mask, qb.conditioning_mode, qb.source_mode, qb.partner_index)
    # KL(normal || HE) on o: k1 = Q1 - Q4 = [0.5, 2.0, 0.0] -> mean 2.5/3
    assert kl["kl_normal_he"].item() == pytest.approx(2.5 / 3)
    # KL(HE || normal) on o^HE: k1 = Q2 - Q3 = [1.0, 1.5] -> mean 1.25
    assert kl["kl_he_normal"].item() == pytest.approx(1.25)


def test_policy_split_config_validation_names_the_field():
    with pytest.raises(ValueError, match=r"policy_split.clamp_order must be one of \('paper', 'reference_code'\)"):
        PolicySplitConfig(clamp_order="late")
    with pytest.raises(ValueError, match="policy_split.kappa"):
        PolicySplitConfig(kappa=0.5)
    with pytest.raises(ValueError, match="policy_split.alpha"):
        PolicySplitConfig(alpha=1.5)
    assert PolicySplitConfig(n_normal=4, n_explore=4).rollouts_per_prompt == 8


def test_quarter_batch_select_keeps_rows_and_global_partner_indices():
    qb = _qb()
    sub = qb.select(torch.tensor([1, 7]))  # sample 1 under both conditionings (Q1 and Q4)
    assert sub.quarter.tolist() == [1, 4] and sub.partner_index.tolist() == [7, 1]
    assert sub.rewards.tolist() == [0.0, 0.0] and sub.input_ids.shape == (2, qb.input_ids.shape[1])
