"""The trainer's step on megatron-core's engine, in real gloo processes:

- a data-parallel rank with NO prompt in a step (uneven split: 3 prompts over DP=2 give 2 + 1, and a
  rank with 0) still reaches every collective, and the update equals DP=1's on the same prompts;
- the whole trainer at TP=2 x PP=2 and at PP=2 with 2 virtual stages: 3 Policy Split steps, every metric present, Adam's first step
  on (nearly) every weight at the configured learning rate;
- one step of every algorithm at PP=2 (one world, the algorithms one after the other);
- DAPO dynamic sampling: groups with uniform rewards are dropped and more prompts are generated;
  when every group is uniform, the step makes no update on any rank.
"""

import json

import pytest
import torch

from tests.distributed.test_trainer_e2e import FIRST_UPDATE, QUICK, check_first_update, check_metrics
from tests.helpers.distributed import run_distributed

PROMPTS = [[5, 6, 7, 8], [5, 9, 7], [6, 6, 8, 9, 10]]


def _samples(vocab: int):
    """3 prompts x (2 normal + 2 HE) samples with mixed rewards, prompt ids fixed."""
    from policy_split_megatron.rollout import DualModePrompt, Sample

    gen = torch.Generator().manual_seed(3)
    prompts = [DualModePrompt(i, tuple(p), tuple([11] + p)) for i, p in enumerate(PROMPTS)]
    samples = []
    for p in prompts:
        for mode in (0, 1):
            for k in range(2):
                length = 3 + int(torch.randint(0, 5, (1,), generator=gen))
                response = tuple(torch.randint(4, vocab, (length,), generator=gen).tolist())
                samples.append(Sample(p.index, mode, k, p.ids(mode), response, tuple([-1.0] * length), "stop",
                                      reward=float(k == 0)))
    return prompts, samples


def _one_step(rank, world_size, folder, split):
    from megatron.core import parallel_state as ps

    from policy_split_megatron.algorithms.config import AlgorithmConfig
    from policy_split_megatron.trainer.step import prepare_step
    from policy_split_megatron.trainer.update import policy_update
    from tests.helpers.engine import build_engine, full_weights

    engine = build_engine(folder, lr=1e-3, eps=1e-6)
    prompts, samples = _samples(engine.arch.vocab_size)
    mine = [prompts[i] for i in split[ps.get_data_parallel_rank()]]
    cfg = AlgorithmConfig()  # Policy Split, the paper's settings
    prepared = prepare_step(engine, cfg, mine, samples, pad_token_id=0, token_budget=64, num_prompts=len(prompts),
                            mini_batches=2)
    metrics = policy_update(engine, prepared.update, cfg, epochs=1, mini_batches=2, micro_batch_tokens=64, step=0)
    return prepared.metrics, metrics, full_weights(engine)


# whole-batch metrics that reduce exactly over data-parallel ranks (sums and counts behind them)
EXACT = ["normal/reward", "high_entropy/reward", "normal/response_length", "normal/entropy_bits",
         "high_entropy/entropy_bits", "inter_mode/kl_normal_he", "inter_mode/kl_he_normal",
         "normal/rollout_mismatch/abs_log_ratio_mean", "advantage/adv_abs_mean", "advantage/he_bonus_mean",
         "advantage/he_clamp_frac", "advantage/kl_he_normal", "advantage/kl_normal_he", "loss", "pg_loss", "grad_norm",
         "entropy", "tokens", "pg_clipfrac"]


def test_a_rank_without_prompts_takes_part_in_the_step(tmp_path):
    from policy_split_megatron.model.tiny import save_random_hf_model

    folder = str(save_random_hf_model("qwen3", tmp_path / "hf", seed=4))
    one = run_distributed(_one_step, 1, folder, [[0, 1, 2]], tp=1)[0]
    for split in ([[0, 1], [2]], [[0, 1, 2], []]):
        for rank, (prepared, update, weights) in enumerate(run_distributed(_one_step, 2, folder, split, tp=1)):
            where = f"split {split} rank {rank}"
            ours, ref = {**prepared, **update}, {**one[0], **one[1]}
            assert ours.keys() == ref.keys(), where
            for key in EXACT:
                assert ours[key] == pytest.approx(ref[key], rel=1e-5, abs=1e-6), f"{where}: {key} {ours[key]} vs {ref[key]}"
            assert max((weights[k] - one[2][k]).abs().max().item() for k in weights) <= 1e-5, where


def _train(rank, world_size, runs):
    from policy_split_megatron.config import load_run_config
    from policy_split_megatron.trainer.run import train

    return [train(load_run_config(None, overrides), show_progress=False) for overrides in runs]


@pytest.mark.parametrize("tp,pp,vpp", [(2, 2, None), (1, 2, 2)])
def test_trainer_at_tp2_pp2_and_with_virtual_stages(tmp_path, tp, pp, vpp):
    run = tmp_path / "run"
    layout = [f"parallel.tensor_parallel={tp}", f"parallel.pipeline_parallel={pp}",
              f"parallel.virtual_pipeline_parallel={vpp}"]
    run_distributed(_train, tp * pp, [QUICK + FIRST_UPDATE + layout + [f"logging.dir='{run}'", "train.steps=3"]],
                    tp=tp, pp=pp, vpp=vpp)
    last = check_metrics(run, 3)
    assert last["train/grad_norm"] > 0
    check_first_update(run, 1e-4)


ALGORITHMS = {
    "policy_split": [],
    "grpo": ["rollout.n_explore=0"],
    "entropy_reg": ["rollout.n_explore=0"],
    "entropy_adv": ["rollout.n_explore=0"],
    "entropy_driven_adv": ["rollout.n_explore=0"],
    "forking_tokens": ["rollout.n_explore=0"],
    "clip_cov": ["rollout.n_explore=0", "algorithm.clip_cov.ratio=0.05", "algorithm.clip_cov.centering=global"],
    "kl_cov": ["rollout.n_explore=0", "algorithm.kl_cov.ratio=0.05", "train.mini_batches=2"],
    "erpd": ["rollout.n_explore=0", "algorithm.erpd.stage=1", "algorithm.erpd.stage1_objective=mse"],
}


def test_every_algorithm_one_step_at_pp2(tmp_path):
    runs = [QUICK + extra + [f"algorithm.name={name}", "parallel.pipeline_parallel=2", "train.steps=1",
                             "checkpoint.export_hf=False", f"logging.dir='{tmp_path / name}'"]
            for name, extra in ALGORITHMS.items()]
    run_distributed(_train, 2, runs, tp=1, pp=2, timeout=1200)
    for name in ALGORITHMS:
        rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        rl = [r for r in rows if r["phase"] == "rl"]
        assert [r["step"] for r in rl] == [1], name
        assert rl[0]["train/grad_norm"] > 0 and "train/loss" in rl[0], (name, sorted(rl[0]))
        assert "normal/rollout_mismatch/abs_log_ratio_mean" in rl[0], name


def index_reward(record, response):
    """Mixed (parity of the length) only for every fourth dataset row: most groups are uniform."""
    return float(len(response) % 2 == 0) if record["index"] % 4 == 0 else 0.0


def constant_reward(record, response):
    return 1.0


def test_dynamic_sampling_drops_uniform_groups(tmp_path):
    dynamic = ["algorithm.dapo.dynamic_sampling=True", "algorithm.dapo.max_generation_rounds=3", "train.steps=2",
               "checkpoint.export_hf=False"]
    runs = [QUICK + dynamic + [f"logging.dir='{tmp_path / 'mixed'}'",
                               "data.reward='tests.distributed.test_trainer_steps:index_reward'"],
            QUICK + dynamic + [f"logging.dir='{tmp_path / 'uniform'}'",
                               "data.reward='tests.distributed.test_trainer_steps:constant_reward'"]]
    run_distributed(_train, 2, runs, tp=1)

    def rl(name):
        rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return [r for r in rows if r["phase"] == "rl"]

    for row in rl("mixed"):
        assert 1 <= row["dapo/generation_rounds"] <= 3 and row["dapo/kept_groups"] <= 4
        assert row["dapo/kept_groups"] == 4 or row["dapo/generation_rounds"] == 3
    for row in rl("uniform"):
        assert row["dapo/generation_rounds"] == 3 and row["dapo/kept_groups"] == 0
        assert row["train/skipped_update"] == 1.0 and "train/grad_norm" not in row
