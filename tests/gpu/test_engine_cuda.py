"""megatron-core's engine on CUDA (one GPU, NCCL world of one): the checks of
tests/distributed/test_engine.py and test_packed_sequences.py where the device boundary is real.

- One trainer step (prepare_step + policy_update) on rows built on the host: every tensor reaches
  the GPU through the one boundary (UpdateBatch.to, Pack.to), the log-probs stay there, and the
  collectives get CUDA tensors (NCCL refuses CPU ones): a device mix-up fails here.
- The engine's update equals the one-process reference (torch AdamW on the unsplit model, padded
  rows) within the tolerance of the TE/cuBLAS kernels.
- Packed log-probs through the Transformer Engine spec (THD) equal unpacked per-row values.
"""

import pytest
import torch

from policy_split_megatron.model.tiny import save_random_hf_model
from tests.gpu.gpu_helpers import run_on_gpu

pytestmark = pytest.mark.gpu


def _trainer_step(folder):
    from policy_split_megatron.algorithms.config import AlgorithmConfig
    from policy_split_megatron.trainer.step import prepare_step
    from policy_split_megatron.trainer.update import policy_update
    from tests.distributed.test_trainer_steps import _samples
    from tests.helpers.engine import build_engine

    engine = build_engine(folder, lr=1e-3)
    assert engine.device.type == "cuda"
    prompts, samples = _samples(engine.arch.vocab_size)
    prepared = prepare_step(engine, AlgorithmConfig(), prompts, samples, pad_token_id=0, token_budget=64,
                            num_prompts=len(prompts), mini_batches=2)
    assert prepared.update.old_log_probs.device.type == "cuda"
    metrics = policy_update(engine, prepared.update, AlgorithmConfig(), epochs=1, mini_batches=2,
                            micro_batch_tokens=64, step=0)
    return metrics["grad_norm"], metrics["loss"]


def test_trainer_step_on_cuda(tmp_path):
    folder = str(save_random_hf_model("qwen3", tmp_path / "hf", seed=4))
    norm, loss = run_on_gpu(_trainer_step, folder)
    assert norm > 0 and loss == loss


def _engine_vs_reference(folder):
    from tests.distributed.test_engine import _engine_run, _reference_run
    from tests.helpers.engine import LENGTHS

    engine = _engine_run(0, 1, folder, LENGTHS, 3)
    reference = _reference_run(0, 1, folder, LENGTHS, 3)
    worst = max((engine[1][k].cpu() - reference[1][k].float().cpu()).abs().max().item() for k in reference[1])
    return engine[0], reference[0], worst


def test_engine_update_equals_reference_on_cuda(tmp_path):
    folder = str(save_random_hf_model("qwen3", tmp_path / "hf", seed=4))
    norms, ref_norms, worst = run_on_gpu(_engine_vs_reference, folder)
    assert all(abs(a - b) <= 1e-3 * b for a, b in zip(norms, ref_norms)), (norms, ref_norms)
    assert worst <= 1e-4, worst


def _packed_vs_unpacked(folder):
    from tests.distributed.test_packed_sequences import _compare

    return _compare(0, 1, folder)


def test_packed_sequences_through_the_te_spec(tmp_path):
    folder = str(save_random_hf_model("qwen3", tmp_path / "hf", seed=6))
    logp_err, ent_err, grad_err, _ = run_on_gpu(_packed_vs_unpacked, folder)
    assert logp_err <= 1e-4 and ent_err <= 1e-4 and grad_err <= 1e-3, (logp_err, ent_err, grad_err)
