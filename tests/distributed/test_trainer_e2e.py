"""The RL loop end to end on the embedded default (tiny model, Countdown, colocated vLLM CPU
engine): it runs at TP=1 and TP=2, logs every metric the papers argue with, and a run stopped
after a checkpoint and resumed ends with the same weights as an uninterrupted run."""

import json

import pytest
import torch

from tests.helpers.distributed import run_distributed

QUICK = [
    "data.prompts_per_step=4",
    "warm_start.steps=3",
    "warm_start.batch_size=8",
    "rollout.he_system_prompt='Explore unusual answers.'",
    "rollout.normal={'max_tokens': 16}",
    "rollout.explore={'max_tokens': 16}",
    "rollout.max_model_len=128",
    "rollout.kv_cache_bytes=134217728",
    "train.micro_batch_tokens=1024",
    "logging.tensorboard=False",
    # The random tiny model solves nothing after 3 warm-start steps; a reward that splits its
    # samples gives every group a learning signal, so the updates depend on the data.
    "data.reward='tests.distributed.test_trainer_e2e:parity_reward'",
]


def parity_reward(record, response):
    return float(len(response) % 2 == 0)


EXPECTED_METRICS = [
    "normal/reward", "high_entropy/reward", "normal/entropy_bits", "high_entropy/entropy_bits",
    "normal/response_length", "high_entropy/response_length",
    "inter_mode/kl_normal_he", "inter_mode/kl_he_normal",
    "normal/distinct_2", "high_entropy/distinct_2", "normal/div_bleu", "high_entropy/div_bleu",
    "normal/distinct_correct", "high_entropy/distinct_correct", "normal/best_of_n", "high_entropy/best_of_n",
    "train/pg_clipfrac", "train/grad_norm",
    "time/rollout", "time/logprob", "time/train", "time/sync",
]


def _train(rank, world_size, overrides):
    from policy_split_megatron.config import load_run_config
    from policy_split_megatron.trainer.run import train

    return train(load_run_config(None, overrides), show_progress=False)


def _final_weights(rank, world_size, checkpoint):
    from megatron.core import dist_checkpointing

    from policy_split_megatron.cpu_shims import megatron_on_cpu

    with megatron_on_cpu():
        state = dist_checkpointing.load_plain_tensors(str(checkpoint))
    # sharded keys are the model's own names; optimizer moments live under "optimizer."
    return {k: v.clone() for k, v in state.items() if isinstance(v, torch.Tensor) and not k.startswith("optimizer")}


def _logged_rl_values(run):
    """The RL steps' rows of metrics.jsonl without wall-clock figures (which differ between identical runs)."""
    timing = ("time/", "seconds", "per_second")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if not any(t in k for t in timing)} for row in rows if row.get("phase") == "rl"]


def _checkpoint_as_hf(rank, world_size, checkpoint, model_dir):
    """The HF tensors of a checkpoint's model (loaded at this world's layout)."""
    from transformers import AutoConfig

    from policy_split_megatron.bridge import export_hf_weights
    from policy_split_megatron.model import architecture_from_hf, build_policy_model
    from policy_split_megatron.trainer.checkpoint import load_checkpoint

    arch = architecture_from_hf(AutoConfig.from_pretrained(model_dir))
    model = build_policy_model(arch)
    load_checkpoint(checkpoint, model, None)
    return {n: t.clone() for n, t in export_hf_weights(model, arch)}


def check_first_update(run, lr: float, model_dir=None) -> None:
    """Step 1 (no warm start) is Adam's first step from the model folder's weights (`model_dir`,
    default: the embedded model in the run): every weight with a gradient moves by
    lr * g / (|g| + eps) ~ lr (plus lr * 0.01 * w of weight decay). So the update happened, on
    (nearly) every weight, at the configured scale: a trainer whose updates did nothing, or reached
    only part of the model, or used another scale, fails."""
    from safetensors.torch import load_file

    model_dir = run / "model" if model_dir is None else model_dir
    before = load_file(str(model_dir / "model.safetensors"))
    after = run_distributed(_checkpoint_as_hf, 1, run / "checkpoints" / "step_000001", model_dir, tp=1)[0]
    moved = torch.cat([(after[k] - before[k]).abs().flatten() for k in before if before[k].ndim == 2])
    assert moved.median() == pytest.approx(lr, rel=0.2), f"median |dW| {moved.median():.3e} vs lr {lr:.1e}"
    assert (moved > 0.5 * lr).float().mean() > 0.8, "most weights did not take Adam's first step"


def check_metrics(run, steps: int) -> dict:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rl = [r for r in rows if r["phase"] == "rl"]
    assert [r["step"] for r in rl] == list(range(1, steps + 1))
    missing = [k for k in EXPECTED_METRICS if k not in rl[-1]]
    assert not missing, f"metrics.jsonl lacks {missing}"
    assert 0.0 <= rl[-1]["normal/reward"] <= 1.0 and rl[-1]["normal/entropy_bits"] > 0
    return rl[-1]


FIRST_UPDATE = ["warm_start.steps=0", "optimizer.lr=1e-4", "checkpoint.every_steps=1", "checkpoint.keep_last=3"]


@pytest.mark.parametrize("tp", [1, 2])
def test_loop_logs_every_metric_and_updates(tmp_path, tp):
    run = tmp_path / "run"
    run_distributed(_train, tp, QUICK + FIRST_UPDATE + [f"parallel.tensor_parallel={tp}", f"logging.dir='{run}'",
                                                         "train.steps=2"], tp=tp)
    check_metrics(run, 2)
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_000002"
    check_first_update(run, 1e-4)


def test_resumed_run_matches_uninterrupted(tmp_path):
    full, split = tmp_path / "full", tmp_path / "split"
    base = QUICK + ["checkpoint.every_steps=0"]
    run_distributed(_train, 1, base + [f"logging.dir='{full}'", "train.steps=3"], tp=1)
    run_distributed(_train, 1, base + [f"logging.dir='{split}'", "train.steps=2"], tp=1)  # "killed" after step 2
    run_distributed(_train, 1, base + [f"logging.dir='{split}'", "train.steps=3"], tp=1)  # resumes from step 2
    a = run_distributed(_final_weights, 1, full / "checkpoints" / "step_000003", tp=1)[0]
    b = run_distributed(_final_weights, 1, split / "checkpoints" / "step_000003", tp=1)[0]
    assert a.keys() == b.keys() and len(a) > 5
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"resumed run differs in {different[:3]}"
    # The same numbers in the logs: every RL step's values but the timings (the interrupted run
    # also logged a final evaluation after its step 2, which the uninterrupted one did not).
    rl_full, rl_split = _logged_rl_values(full), _logged_rl_values(split)
    assert [r["step"] for r in rl_full] == [1, 2, 3]
    assert rl_split == rl_full
