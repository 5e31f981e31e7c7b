"""Loss normalisation of the policy update does not depend on micro-batching or on the
data-parallel size: the same rows give the same gradient norm (a scale-sensitive quantity; AdamW's
update itself would hide a wrong scale) and the same new weights."""

import pytest
import torch

from policy_split_megatron.model.tiny import save_random_hf_model
from tests.helpers.distributed import run_distributed

ROWS, WIDTH = 8, 14


def _batch(vocab: int):
    from policy_split_megatron.trainer.update import UpdateBatch

    gen = torch.Generator().manual_seed(0)
    lengths = torch.tensor([14, 9, 12, 6, 14, 11, 8, 13])
    ids = torch.randint(0, vocab, (ROWS, WIDTH), generator=gen)
    prompt = 4
    positions = torch.arange(WIDTH)
    mask = (positions >= prompt) & (positions < lengths[:, None])
    advantages = torch.randn(ROWS, 1, generator=gen).expand(ROWS, WIDTH) * mask
    old = -torch.rand(ROWS, WIDTH, generator=gen) * mask  # off-policy old log-probs: ratios != 1
    return UpdateBatch(ids, lengths, old, advantages, mask)


def _update(rank, world_size, folder, agg_mode, micro_tokens):
    from transformers import AutoConfig

    from policy_split_megatron.algorithms.config import AlgorithmConfig
    from policy_split_megatron.bridge import SafetensorsSource, export_hf_weights, load_hf_weights
    from policy_split_megatron.model import architecture_from_hf, build_policy_model
    from policy_split_megatron.trainer.optimizer import OptimizerConfig, PolicyOptimizer
    from policy_split_megatron.trainer.update import UpdateBatch, policy_update

    arch = architecture_from_hf(AutoConfig.from_pretrained(folder))
    model = build_policy_model(arch)
    load_hf_weights(model, arch, SafetensorsSource(folder))
    optimizer = PolicyOptimizer(model, OptimizerConfig(lr=1e-3, grad_clip=0.0))
    full = _batch(arch.vocab_size)
    rows = torch.arange(ROWS).chunk(world_size)[rank]  # this data-parallel rank's rows
    mine = UpdateBatch(*(getattr(full, f)[rows] for f in ("input_ids", "lengths", "old_log_probs", "advantages", "response_mask")))
    cfg = AlgorithmConfig(name="grpo", loss_agg_mode=agg_mode)
    metrics = policy_update(model, arch, optimizer, mine, cfg, epochs=1, mini_batches=1,
                            micro_batch_tokens=micro_tokens, temperature=1.0, chunk_size=64, step=0)
    return metrics["grad_norm"], {n: t.clone() for n, t in export_hf_weights(model, arch)}


@pytest.mark.parametrize("agg_mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
def test_update_is_invariant_to_micro_batches_and_dp(tmp_path, agg_mode):
    folder = str(save_random_hf_model("qwen3", tmp_path / "hf", seed=4))
    one_micro = run_distributed(_update, 1, folder, agg_mode, 10_000, tp=1)[0]
    many_micro = run_distributed(_update, 1, folder, agg_mode, 30, tp=1)[0]  # 2-3 rows per micro-batch
    two_dp = run_distributed(_update, 2, folder, agg_mode, 30, tp=1)
    for name, (norm, weights) in {"micro-batched": many_micro, "DP=2 rank 0": two_dp[0], "DP=2 rank 1": two_dp[1]}.items():
        assert abs(norm - one_micro[0]) <= 1e-5 * one_micro[0], f"{name}: grad norm {norm} vs {one_micro[0]}"
        # AdamW's first step is ~lr * sign(grad): rounding noise in near-zero gradients moves a few
        # weights by a fraction of lr (1e-3); a wrongly weighted row would move many by ~lr.
        worst = max((weights[k] - one_micro[1][k]).abs().max().item() for k in weights)
        assert worst <= 1e-5, f"{name}: weights differ by {worst:.2e}"
