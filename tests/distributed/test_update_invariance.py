"""Loss normalisation of the policy update does not depend on micro-batching, the data-parallel size
or the pipeline-parallel size: the same rows give the same gradient norm (a scale-sensitive
quantity; AdamW's update itself would hide a wrong scale), the same loss and the same new weights."""

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


def _update(rank, world_size, folder, agg_mode, micro_tokens, mini_batches=1):
    from megatron.core import parallel_state as ps

    from policy_split_megatron.algorithms.config import AlgorithmConfig
    from policy_split_megatron.rollout.layout import shard_bounds
    from policy_split_megatron.trainer.update import UpdateBatch, mini_batch_of_prompts, policy_update
    from tests.helpers.engine import build_engine, full_weights

    engine = build_engine(folder, lr=1e-3, grad_clip=0.0, eps=1e-6)
    full = _batch(engine.arch.vocab_size)
    lo, hi = shard_bounds(ROWS, ps.get_data_parallel_world_size(), ps.get_data_parallel_rank())
    rows = torch.arange(lo, hi)  # this data-parallel rank's rows (one prompt each)
    mine = UpdateBatch(*(getattr(full, f)[rows] for f in ("input_ids", "lengths", "old_log_probs", "advantages",
                                                          "response_mask")),
                       mini_batch=mini_batch_of_prompts(rows, ROWS, mini_batches))
    cfg = AlgorithmConfig(name="grpo", loss_agg_mode=agg_mode)
    metrics = policy_update(engine, mine, cfg, epochs=1, mini_batches=mini_batches, micro_batch_tokens=micro_tokens,
                            step=0)
    return metrics["grad_norm"], metrics["loss"], full_weights(engine)


@pytest.mark.parametrize("agg_mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
def test_update_is_invariant_to_micro_batches_dp_and_pp(tmp_path, agg_mode):
    folder = str(save_random_hf_model("qwen3", tmp_path / "hf", seed=4))
    one_micro = run_distributed(_update, 1, folder, agg_mode, 10_000, tp=1)[0]
    variants = {
        "micro-batched": run_distributed(_update, 1, folder, agg_mode, 30, tp=1),  # 2-3 rows per micro-batch
        "DP=2": run_distributed(_update, 2, folder, agg_mode, 30, tp=1),
        "PP=2": run_distributed(_update, 2, folder, agg_mode, 30, tp=1, pp=2),
    }
    for name, results in variants.items():
        for rank, (norm, loss, weights) in enumerate(results):
            where = f"{name} rank {rank}"
            assert abs(norm - one_micro[0]) <= 1e-5 * one_micro[0], f"{where}: grad norm {norm} vs {one_micro[0]}"
            assert abs(loss - one_micro[1]) <= 1e-5 * abs(one_micro[1]), f"{where}: loss {loss} vs {one_micro[1]}"
            worst = max((weights[k] - one_micro[2][k]).abs().max().item() for k in weights)
            assert worst <= 1e-5, f"{where}: weights differ by {worst:.2e}"


def test_mini_batches_are_the_same_rows_at_any_dp_size(tmp_path):
    """3 mini-batches of 8 one-row prompts, uneven over DP=2 in every mini-batch (3+3+2 rows: one rank
    holds 2 rows of mini-batch 0 and the other 1): the three updates equal DP=1's."""
    folder = str(save_random_hf_model("qwen3", tmp_path / "hf", seed=4))
    dp1 = run_distributed(_update, 1, folder, "token-mean", 30, 3, tp=1)[0]
    for norm, loss, weights in run_distributed(_update, 2, folder, "token-mean", 30, 3, tp=1):
        assert abs(norm - dp1[0]) <= 1e-5 * dp1[0] and abs(loss - dp1[1]) <= 1e-5 * abs(dp1[1])
        assert max((weights[k] - dp1[2][k]).abs().max().item() for k in weights) <= 1e-5
