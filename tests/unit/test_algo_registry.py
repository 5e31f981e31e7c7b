"""The config tree and the dispatcher: one call path, each algorithm routed to its own math."""

import pytest
import torch

from policy_split_megatron.algorithms import (
    AlgorithmConfig,
    MicroBatch,
    RolloutBatch,
    compute_advantages,
    compute_loss,
    config_from_dict,
    loss_denominator,
    requirements,
)
from policy_split_megatron.algorithms import covariance, entropy_baselines as eb, erpd
from policy_split_megatron.algorithms.advantages import broadcast_to_tokens, grpo_advantages
from policy_split_megatron.algorithms.aggregation import aggregate_loss
from policy_split_megatron.algorithms.config import (
    ClipCovConfig,
    EntropyAdvConfig,
    EntropyRegConfig,
    ERPDConfig,
    ForkingTokensConfig,
    KLCovConfig,
    PPOConfig,
    ScheduleConfig,
)
from policy_split_megatron.algorithms.ppo import ppo_clip_loss


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.arange(5).unsqueeze(0) < torch.tensor([5, 3, 4, 2, 5, 1]).unsqueeze(1)
    old = -torch.rand(6, 5, generator=g) * 2
    rollout = RolloutBatch(
        rewards=torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0]), group_ids=torch.tensor([0, 0, 0, 1, 1, 1]),
        response_mask=mask, old_log_probs=old, old_entropy=torch.rand(6, 5, generator=g) * 3)
    lp = (old + 0.3 * torch.randn(6, 5, generator=g)).requires_grad_(True)
    entropy = (torch.rand(6, 5, generator=g) * 3).requires_grad_(True)
    return rollout, lp, entropy


def _loss(cfg, rollout, lp, entropy=None, **kw):
    adv = compute_advantages(cfg, rollout)
    mb = MicroBatch(log_probs=lp, old_log_probs=rollout.old_log_probs, advantages=adv.advantages,
                    response_mask=adv.response_mask, gradient_mask=adv.gradient_mask, entropy=entropy,
                    ref_log_probs=kw.pop("ref_log_probs", None))
    return adv, compute_loss(cfg, mb, global_denominator=loss_denominator(cfg, adv.response_mask), **kw)


def _grpo_tokens(rollout):
    return broadcast_to_tokens(grpo_advantages(rollout.rewards, rollout.group_ids), rollout.response_mask)


def test_config_errors_name_the_field_and_the_allowed_values():
    with pytest.raises(ValueError, match=r"algorithm.name must be one of \('policy_split', 'grpo'"):
        AlgorithmConfig(name="ppo2")
    with pytest.raises(ValueError, match="algorithm.loss_agg_mode must be one of"):
        AlgorithmConfig(loss_agg_mode="token-sum")
    with pytest.raises(ValueError, match=r"kl_cov.ratio must be a fraction in \(0, 1\]"):
        KLCovConfig(ratio=2.0)
    with pytest.raises(ValueError, match="entropy_adv.kappa must be > 1"):
        EntropyAdvConfig(kappa=1.0)
    with pytest.raises(ValueError, match="erpd.stage must be 1 or 2"):
        ERPDConfig(stage=3)
    with pytest.raises(ValueError, match="ppo.dual_clip_c must be None or > 1"):
        PPOConfig(dual_clip_c=0.5)
    with pytest.raises(ValueError, match="erpd.signal must be one of"):
        ERPDConfig(signal="kl")


def test_config_from_nested_dicts():
    cfg = config_from_dict(AlgorithmConfig, {
        "name": "kl_cov", "kl_cov": {"ratio": 2e-3, "beta": {"kind": "linear", "initial": 1.0, "total_steps": 10}}})
    assert cfg.kl_cov.ratio == 2e-3 and cfg.kl_cov.beta.value(5) == pytest.approx(0.5)
    assert cfg.policy_split.eta == 0.03 and cfg.ppo.clip_eps_low == 0.2  # paper defaults elsewhere
    with pytest.raises(ValueError, match="unknown field"):
        config_from_dict(AlgorithmConfig, {"kl_cov": {"k_percent": 0.2}})


def test_requirements():
    assert requirements(AlgorithmConfig(name="entropy_reg")).current_entropy
    assert requirements(AlgorithmConfig(name="forking_tokens")).old_entropy
    assert not requirements(AlgorithmConfig(name="grpo")).old_entropy
    assert requirements(AlgorithmConfig(name="policy_split")).quarters
    assert requirements(AlgorithmConfig(name="erpd", erpd=ERPDConfig(stage=2))).teacher_log_probs
    assert requirements(AlgorithmConfig(name="kl_cov", kl_cov=KLCovConfig(centering="global"))).centering_means
    assert requirements(AlgorithmConfig(name="grpo", ppo=PPOConfig(kl_coef=0.01))).ref_log_probs
    # global statistics the trainer must reduce over data-parallel ranks
    assert requirements(AlgorithmConfig(name="forking_tokens")).forking_threshold
    assert not requirements(AlgorithmConfig(name="entropy_driven_adv")).batch_mean_entropy  # "group": local
    assert requirements(config_from_dict(AlgorithmConfig, {"name": "entropy_driven_adv",
                                                           "entropy_driven_adv": {"normalizer": "batch"}})).batch_mean_entropy
    plain = requirements(AlgorithmConfig(name="grpo"))
    assert not (plain.engine_log_probs or plain.truncated or plain.max_response_length or plain.dynamic_sampling
                or plain.forking_threshold or plain.ref_log_probs)


def test_grpo_routes_to_ppo_clip():
    rollout, lp, _ = _batch()
    adv, (loss, _) = _loss(AlgorithmConfig(name="grpo"), rollout, lp)
    torch.testing.assert_close(adv.advantages, _grpo_tokens(rollout))
    direct, _ = ppo_clip_loss(lp, rollout.old_log_probs, adv.advantages, rollout.response_mask,
                              global_denominator=rollout.response_mask.sum())
    assert loss.item() == pytest.approx(direct.item())


def test_entropy_reg_adds_the_annealed_bonus():
    rollout, lp, h = _batch()
    cfg = AlgorithmConfig(name="entropy_reg", entropy_reg=EntropyRegConfig(
        coef=ScheduleConfig(kind="linear", initial=0.003, total_steps=10)))
    n = rollout.response_mask.sum()
    plain, _ = ppo_clip_loss(lp, rollout.old_log_probs, _grpo_tokens(rollout), rollout.response_mask, global_denominator=n)
    mean_h = aggregate_loss(h, rollout.response_mask, "token-mean", n)
    _, (loss0, m) = _loss(cfg, rollout, lp, h, step=0)
    assert loss0.item() == pytest.approx((plain - 0.003 * mean_h).item())
    _, (loss5, _) = _loss(cfg, rollout, lp, h, step=5)
    assert loss5.item() == pytest.approx((plain - 0.0015 * mean_h).item())
    _, (loss10, _) = _loss(cfg, rollout, lp, h, step=10)
    assert loss10.item() == pytest.approx(plain.item())
    with pytest.raises(ValueError, match="MicroBatch.entropy"):
        _loss(cfg, rollout, lp, None)


def test_entropy_adv_current_and_old_sources():
    rollout, lp, h = _batch()
    n = rollout.response_mask.sum()
    _, (loss, _) = _loss(AlgorithmConfig(name="entropy_adv"), rollout, lp, h)
    shaped = eb.entropy_shaped_advantages(_grpo_tokens(rollout), h, rollout.response_mask, alpha=0.4, kappa=2.0)
    direct, _ = ppo_clip_loss(lp, rollout.old_log_probs, shaped, rollout.response_mask, global_denominator=n)
    assert loss.item() == pytest.approx(direct.item())
    adv = compute_advantages(AlgorithmConfig(name="entropy_adv", entropy_adv=EntropyAdvConfig(entropy_source="old")), rollout)
    torch.testing.assert_close(adv.advantages, eb.entropy_shaped_advantages(
        _grpo_tokens(rollout), rollout.old_entropy, rollout.response_mask))


def test_entropy_driven_and_forking_tokens():
    rollout, lp, _ = _batch()
    adv = compute_advantages(AlgorithmConfig(name="entropy_driven_adv"), rollout)
    eda, _ = eb.entropy_driven_advantages(grpo_advantages(rollout.rewards, rollout.group_ids), rollout.old_entropy,
                                          rollout.response_mask, rollout.group_ids)
    torch.testing.assert_close(adv.advantages, broadcast_to_tokens(eda, rollout.response_mask))

    # "batch": the global mean P the trainer reduced over ranks is the one used
    cfg = config_from_dict(AlgorithmConfig, {"name": "entropy_driven_adv", "entropy_driven_adv": {"normalizer": "batch"}})
    rollout.batch_mean_entropy = torch.tensor(1.7)
    eda, _ = eb.entropy_driven_advantages(grpo_advantages(rollout.rewards, rollout.group_ids), rollout.old_entropy,
                                          rollout.response_mask, rollout.group_ids, normalizer="batch",
                                          batch_mean_entropy=1.7)
    torch.testing.assert_close(compute_advantages(cfg, rollout).advantages, broadcast_to_tokens(eda, rollout.response_mask))
    rollout.batch_mean_entropy = None

    cfg = AlgorithmConfig(name="forking_tokens", forking_tokens=ForkingTokensConfig(top_fraction=0.25))
    rollout.forking_threshold = torch.tensor(2.0)  # a global threshold is used as given
    given = compute_advantages(cfg, rollout).gradient_mask
    assert torch.equal(given, rollout.response_mask & (rollout.old_entropy >= 2.0))
    rollout.forking_threshold = None
    adv, (loss, _) = _loss(cfg, rollout, lp)
    assert int(adv.gradient_mask.sum()) == 5  # ceil(0.25 * 20 valid tokens)
    loss.backward()
    assert torch.count_nonzero(lp.grad[~adv.gradient_mask]) == 0 and torch.count_nonzero(lp.grad[adv.gradient_mask]) > 0


def test_clip_cov_and_kl_cov_routes():
    rollout, lp, _ = _batch()
    n = rollout.response_mask.sum()
    cfg = AlgorithmConfig(name="clip_cov", clip_cov=ClipCovConfig(ratio=0.2, lb=0.0, ub=100.0))
    _, (loss, m) = _loss(cfg, rollout, lp, generator=torch.Generator().manual_seed(1))
    direct, _ = covariance.clip_cov_loss(lp, rollout.old_log_probs, _grpo_tokens(rollout), rollout.response_mask,
                                         global_denominator=n, ratio=0.2, lb=0.0, ub=100.0,
                                         generator=torch.Generator().manual_seed(1))
    assert loss.item() == pytest.approx(direct.item()) and m["clip_cov_selected"].item() >= 1

    cfg = AlgorithmConfig(name="kl_cov", kl_cov=KLCovConfig(beta=ScheduleConfig(kind="cosine", initial=1.0, total_steps=4)))
    _, (loss_end, m_end) = _loss(cfg, rollout, lp, step=4)
    unclipped, _ = ppo_clip_loss(lp, rollout.old_log_probs, _grpo_tokens(rollout), rollout.response_mask,
                                 global_denominator=n, clip_eps_low=None, clip_eps_high=None)
    assert m_end["kl_cov_beta"].item() == 0.0 and loss_end.item() == pytest.approx(unclipped.item())
    _, (loss_start, _) = _loss(cfg, rollout, lp, step=0)
    assert loss_start.item() > loss_end.item()  # beta = 1 adds |log ratio| on the selected token

    cfg = AlgorithmConfig(name="kl_cov", kl_cov=KLCovConfig(centering="global"))
    with pytest.raises(ValueError, match="centering_means"):
        _loss(cfg, rollout, lp)


def test_reference_kl_is_added_on_top_of_any_policy_loss():
    rollout, lp, _ = _batch()
    ref = rollout.old_log_probs - 0.1
    _, (with_kl, m) = _loss(AlgorithmConfig(name="grpo", ppo=PPOConfig(kl_coef=0.5, kl_estimator="k1")),
                            rollout, lp, ref_log_probs=ref)
    _, (without, _) = _loss(AlgorithmConfig(name="grpo"), rollout, lp)
    n = rollout.response_mask.sum()
    k1 = aggregate_loss(lp - ref, rollout.response_mask, "token-mean", n)
    assert with_kl.item() == pytest.approx((without + 0.5 * k1).item())


def test_erpd_routes():
    rollout, lp, _ = _batch()
    n = rollout.response_mask.sum()
    # stage 1, pg without clip: -A * rho
    _, (loss, m) = _loss(AlgorithmConfig(name="erpd"), rollout, lp)
    direct, _ = ppo_clip_loss(lp, rollout.old_log_probs, _grpo_tokens(rollout), rollout.response_mask,
                              global_denominator=n, clip_eps_low=None, clip_eps_high=None)
    assert loss.item() == pytest.approx(direct.item()) and "kl_to_base_k3" in m
    # stage 1, ce: only rewarded responses, normalised by their tokens (rows 0, 2, 3: 5 + 4 + 2 = 11)
    adv, (loss, _) = _loss(AlgorithmConfig(name="erpd", erpd=ERPDConfig(stage1_objective="ce")), rollout, lp)
    assert int(adv.response_mask.sum()) == 11 and not adv.response_mask[[1, 4, 5]].any()
    rows = torch.tensor([0, 2, 3])
    assert loss.item() == pytest.approx((-(lp[rows] * rollout.response_mask[rows]).sum() / 11).item())
    # stage 1, mse: anchored on the FROZEN base (ref_log_probs), never on pi_old; refused without it
    mse = AlgorithmConfig(name="erpd", erpd=ERPDConfig(stage1_objective="mse"))
    assert requirements(mse).ref_log_probs and not requirements(AlgorithmConfig(name="erpd")).ref_log_probs
    with pytest.raises(ValueError, match="frozen base"):
        _loss(mse, rollout, lp)
    base = rollout.old_log_probs - 0.3  # pi_old has moved away from the base
    _, (loss, m) = _loss(mse, rollout, lp, ref_log_probs=base)
    a = _grpo_tokens(rollout)
    by_hand = (0.5 * (lp - base - 0.1 * a) ** 2)[rollout.response_mask].sum() / n
    assert loss.item() == pytest.approx(by_hand.item())
    anchored_on_old = (0.5 * (lp - rollout.old_log_probs - 0.1 * a) ** 2)[rollout.response_mask].sum() / n
    assert abs(loss.item() - anchored_on_old.item()) > 1e-3  # the test can tell the two anchors apart
    assert m["kl_to_base_k1"].item() == pytest.approx(erpd.kl_to_base(lp, base, rollout.response_mask)["kl_to_base_k1"].item())
    # stage 2: the teacher signal becomes the advantage of the distillation loss around the base
    teachers = [rollout.old_log_probs + 0.2, rollout.old_log_probs - 0.1]
    rollout.teacher_log_probs = teachers
    cfg = AlgorithmConfig(name="erpd", erpd=ERPDConfig(stage=2))
    adv, (loss, _) = _loss(cfg, rollout, lp)
    torch.testing.assert_close(adv.advantages, erpd.teacher_signal(teachers, rollout.old_log_probs, rollout.response_mask))
    direct, _ = erpd.distill_loss(lp, rollout.old_log_probs, adv.advantages, rollout.response_mask,
                                  global_denominator=n, kl_coef=0.1)
    assert loss.item() == pytest.approx(direct.item())


def test_policy_split_requires_quarter_fields():
    rollout, _, _ = _batch()
    with pytest.raises(ValueError, match="conditioning_mode"):
        compute_advantages(AlgorithmConfig(name="policy_split"), rollout)


def test_algorithms_package_never_touches_process_groups():
    import pathlib

    import policy_split_megatron.algorithms as pkg

    for path in pathlib.Path(pkg.__file__).parent.glob("*.py"):
        text = path.read_text()
        for forbidden in ("torch.distributed", "from torch import distributed", "import megatron", "from megatron"):
            assert forbidden not in text, f"{path.name} mentions {forbidden}"
