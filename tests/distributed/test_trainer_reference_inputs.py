"""The inputs the trainer feeds besides the policy's own log-probs, in real gloo processes:
reference-policy log-probs (ppo.kl_coef > 0), ERPD stage-2 teachers (with the frozen base as pi_old),
and Clip-Cov/KL-Cov "global" centering means all-reduced over data-parallel ranks."""

import json
import math

import pytest
import torch

from tests.distributed.test_trainer_e2e import QUICK
from tests.helpers.distributed import run_distributed


def _train(rank, world_size, overrides):
    from policy_split_megatron.config import load_run_config
    from policy_split_megatron.trainer.run import train

    return train(load_run_config(None, overrides), show_progress=False)


def _rl_rows(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["phase"] == "rl"]


ONE_UPDATE_PER_STEP = ["train.ppo_epochs=1", "train.mini_batches=1", "checkpoint.every_steps=0"]


def test_reference_kl_is_zero_before_the_first_update_and_grows_after(tmp_path):
    run = tmp_path / "run"
    run_distributed(_train, 1, QUICK + ONE_UPDATE_PER_STEP + [
        f"logging.dir='{run}'", "train.steps=2", "algorithm.ppo.kl_coef=0.1"], tp=1)
    rl = _rl_rows(run)
    assert [r["step"] for r in rl] == [1, 2]
    # step 1: one update, its loss computed before the optimizer step: the policy IS the reference
    # (the post-warm-start weights; the warm start moved the policy away from the model folder)
    assert abs(rl[0]["train/ref_kl"]) < 1e-6, rl[0]["train/ref_kl"]
    assert abs(rl[0]["reference/kl_k1_old"]) < 1e-6
    # after one Adam step the k3 estimate is ~ delta^2 / 2 with |delta log pi| ~ 1e-3 (measured 4.5e-7):
    # far above float noise, which step 1 shows is exactly 0 here
    assert rl[1]["train/ref_kl"] > 1e-8, rl[1]["train/ref_kl"]
    assert (run / "reference" / "config.json").exists()


def _write_teacher(folder, *, perturb: float = 0.0, seed: int = 0, **arch_overrides):
    from safetensors.torch import load_file, save_file

    from policy_split_megatron.tasks.tiny_model import write_tiny_model

    write_tiny_model(folder, seed=seed, **arch_overrides)
    if perturb:
        path = folder / "model.safetensors"
        tensors = load_file(str(path))
        gen = torch.Generator().manual_seed(1)
        tensors = {k: v + perturb * torch.randn(v.shape, generator=gen) * v.float().std().clamp(min=1e-3)
                   for k, v in tensors.items()}
        save_file(tensors, str(path), metadata={"format": "pt"})
    return folder


ERPD2 = ["algorithm.name=erpd", "algorithm.erpd.stage=2", "rollout.n_explore=0"]


def test_erpd_stage_2_distills_a_teacher_around_the_frozen_base(tmp_path):
    run = tmp_path / "run"
    teacher = _write_teacher(tmp_path / "teacher", perturb=0.3)  # the run's model (seed 0), perturbed
    run_distributed(_train, 1, QUICK + ONE_UPDATE_PER_STEP + ERPD2 + [
        f"logging.dir='{run}'", "train.steps=2", f"algorithm.erpd.teachers=['{teacher}']"], tp=1)
    rl = _rl_rows(run)
    assert [r["step"] for r in rl] == [1, 2]
    for row in rl:
        assert row["erpd/teacher0_abs_log_ratio_to_base"] > 1e-3  # the teacher is not the base
        assert row["erpd/teacher0_abs_log_ratio_to_policy"] > 1e-3
        train = {k: v for k, v in row.items() if k.startswith("train/")}
        assert train and all(math.isfinite(v) for v in train.values()), train
    # pi_old of stage 2 is the frozen base: 0 KL at step 1, and > 0 at step 2 (not re-anchored to the
    # policy that generated step 2's rollouts, which would give 0 again before the step-2 update)
    assert abs(rl[0]["train/kl_to_base_k3"]) < 1e-6
    assert rl[1]["train/kl_to_base_k3"] > 1e-7, rl[1]["train/kl_to_base_k3"]
    assert rl[0]["train/signal_mean"] != 0.0


def test_erpd_teacher_of_another_architecture_is_refused_at_start(tmp_path):
    teacher = _write_teacher(tmp_path / "teacher", num_hidden_layers=2)
    with pytest.raises(AssertionError, match=r"teacher .*teacher cannot be used: .*num_hidden_layers: 2 in .* but 4 in the model"):
        run_distributed(_train, 1, QUICK + ERPD2 + [
            f"logging.dir='{tmp_path / 'run'}'", "train.steps=1", f"algorithm.erpd.teachers=['{teacher}']"], tp=1)


def test_global_centering_runs_at_dp_2(tmp_path):
    run = tmp_path / "run"
    run_distributed(_train, 2, QUICK + ONE_UPDATE_PER_STEP + [
        f"logging.dir='{run}'", "train.steps=1", "algorithm.name=kl_cov", "algorithm.kl_cov.centering=global",
        "algorithm.kl_cov.ratio=0.2", "rollout.n_explore=0"], tp=1)
    rl = _rl_rows(run)
    assert len(rl) == 1 and math.isfinite(rl[0]["train/grad_norm"]) and rl[0]["train/grad_norm"] > 0


ROWS, WIDTH = 8, 24


def _one_update(rank, world_size, model_dir, algorithm):
    """One policy_update on the same 8 rows: all on one rank (DP=1) or 4 per rank (DP=2); each rank's
    micro-batches are 4 rows either way, so only the centering means could tell DP=1 and DP=2 apart."""
    from policy_split_megatron.algorithms.config import AlgorithmConfig, KLCovConfig
    from policy_split_megatron.trainer.update import UpdateBatch, _global_centering_means, policy_update
    from tests.helpers.engine import build_engine

    engine = build_engine(model_dir)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 60, (ROWS, WIDTH), generator=gen)
    lengths = torch.full((ROWS,), WIDTH)
    mask = torch.zeros(ROWS, WIDTH, dtype=torch.bool)
    mask[:, 8:] = True
    adv = torch.randn(ROWS, 1, generator=gen).expand(ROWS, WIDTH) * mask
    old = torch.randn(ROWS, WIDTH, generator=gen) * 0.01 - 3.0
    lo, hi = (0, ROWS) if world_size == 1 else (rank * ROWS // 2, (rank + 1) * ROWS // 2)
    batch = UpdateBatch(ids[lo:hi], lengths[lo:hi], old[lo:hi], adv[lo:hi].contiguous(), mask[lo:hi])
    cfg = AlgorithmConfig(name="kl_cov", kl_cov=KLCovConfig(ratio=0.3, centering=algorithm))
    means = [float(v) for v in _global_centering_means(engine, batch, torch.arange(hi - lo), 4 * WIDTH)]
    metrics = policy_update(engine, batch, cfg, epochs=1, mini_batches=1, micro_batch_tokens=4 * WIDTH, step=0)
    return means, metrics["grad_norm"]


def test_global_centering_gives_the_same_update_at_dp_1_and_dp_2(tmp_path):
    from policy_split_megatron.tasks.tiny_model import write_tiny_model

    model_dir = write_tiny_model(tmp_path / "model", seed=0)
    (means1, norm1), = run_distributed(_one_update, 1, model_dir, "global", tp=1)
    (means2a, norm2a), (means2b, norm2b) = run_distributed(_one_update, 2, model_dir, "global", tp=1)
    assert means2a == pytest.approx(means1, rel=1e-6) and means2b == pytest.approx(means1, rel=1e-6)
    assert norm2a == pytest.approx(norm1, rel=1e-5) and norm2b == pytest.approx(norm1, rel=1e-5)


def test_erpd_stage_1_mse_is_anchored_on_the_frozen_base(tmp_path):
    """requirements() asks for the reference when stage 1 uses "mse", so the trainer scores the frozen base
    and the loss regresses log pi - log pi_base: after one update, step 2's pi_old has moved away from the
    base, and the KL to the base (computed before step 2's update, where pi == pi_old) is no longer 0. Had
    the anchor been pi_old, it would be exactly 0 at every step."""
    run = tmp_path / "run"
    run_distributed(_train, 1, QUICK + ONE_UPDATE_PER_STEP + [
        f"logging.dir='{run}'", "train.steps=2", "algorithm.name=erpd", "algorithm.erpd.stage1_objective=mse",
        "rollout.n_explore=0", "optimizer.lr=1e-3"], tp=1)
    rl = _rl_rows(run)
    assert (run / "reference" / "config.json").exists()
    assert abs(rl[0]["train/kl_to_base_k1"]) < 1e-6 and abs(rl[0]["reference/kl_k1_old"]) < 1e-6
    assert abs(rl[1]["reference/kl_k1_old"]) > 1e-6 and abs(rl[1]["train/kl_to_base_k1"]) > 1e-6
