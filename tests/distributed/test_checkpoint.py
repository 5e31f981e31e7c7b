"""Training checkpoints: atomic save, exact resume (weights, AdamW moments, RNG, common state),
re-sharding from TP=2 to TP=1, clear errors for partial or mismatched checkpoints, and the
optimizer's refusal of non-finite gradients."""

import pytest
import torch

from policy_split_megatron.model.tiny import save_random_hf_model
from tests.helpers.distributed import run_distributed


def _policy(folder, seed=0):
    from transformers import AutoConfig

    from policy_split_megatron.bridge import SafetensorsSource, load_hf_weights
    from policy_split_megatron.model import architecture_from_hf, build_policy_model
    from policy_split_megatron.trainer.optimizer import OptimizerConfig, PolicyOptimizer

    arch = architecture_from_hf(AutoConfig.from_pretrained(folder))
    model = build_policy_model(arch)
    if seed == 0:
        load_hf_weights(model, arch, SafetensorsSource(folder))
    else:  # a different starting point, to prove that loading overwrites everything
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(generator=torch.Generator().manual_seed(seed))
    return arch, model, PolicyOptimizer(model, OptimizerConfig(lr=1e-2))


def _train_step(arch, model, optimizer, step):
    from policy_split_megatron.model import forward_logits
    from policy_split_megatron.ops import logprobs_and_entropy

    ids = torch.randint(0, arch.vocab_size, (2, 9), generator=torch.Generator().manual_seed(100 + step))
    logp, entropy = logprobs_and_entropy(forward_logits(model, ids, arch)[:, :-1], ids[:, 1:], vocab_size=arch.vocab_size)
    (-(logp.mean()) - 0.1 * entropy.mean()).backward()
    return optimizer.step(step_index=step)


def _save_resume(rank, world_size, folder, root):
    from policy_split_megatron.bridge import export_hf_weights
    from policy_split_megatron.trainer.checkpoint import (
        CheckpointError,
        latest_checkpoint,
        load_checkpoint,
        save_checkpoint,
    )

    arch, model, optimizer = _policy(folder)
    _train_step(arch, model, optimizer, 1)
    save_checkpoint(root, 1, model, optimizer, {"sampler": {"epoch": 0, "position": 8}})
    after_save = torch.rand(4)
    _train_step(arch, model, optimizer, 2)
    reference = [p.detach().clone() for p in model.parameters()]

    # A save killed mid-way leaves a .partial directory that is never read.
    if rank == 0:
        (root / "step_000002.partial").mkdir()
    torch.distributed.barrier()
    assert latest_checkpoint(root).name == "step_000001"
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        load_checkpoint(root / "step_000002.partial", model, optimizer)

    arch2, model2, optimizer2 = _policy(folder, seed=7)
    common = load_checkpoint(latest_checkpoint(root), model2, optimizer2)
    assert common == {"sampler": {"epoch": 0, "position": 8}, "step": 1}
    assert torch.equal(torch.rand(4), after_save), "RNG state not restored"
    _train_step(arch2, model2, optimizer2, 2)
    resumed_equal = all(torch.equal(a, b) for a, b in zip(reference, model2.parameters()))
    return resumed_equal, {n: t.clone() for n, t in export_hf_weights(model2, arch2)}


def _load_at_tp1(rank, world_size, folder, root):
    from policy_split_megatron.bridge import export_hf_weights
    from policy_split_megatron.trainer.checkpoint import latest_checkpoint, load_checkpoint

    arch, model, optimizer = _policy(folder, seed=3)
    # Load the step-1 checkpoint, repeat step 2 at TP=1: same weights as at TP=2 up to float
    # reassociation of the sharded matmuls.
    load_checkpoint(latest_checkpoint(root), model, optimizer)
    _train_step(arch, model, optimizer, 2)
    return {n: t.clone() for n, t in export_hf_weights(model, arch)}


def test_resume_is_exact_and_reshards(tmp_path):
    folder = str(save_random_hf_model("qwen3", tmp_path / "hf", seed=2))
    root = tmp_path / "checkpoints"
    results = run_distributed(_save_resume, 2, folder, root, tp=2)
    assert all(equal for equal, _ in results), "resumed run diverged from the uninterrupted one"
    at_tp2 = results[0][1]
    at_tp1 = run_distributed(_load_at_tp1, 1, folder, root, tp=1)[0]
    assert at_tp1.keys() == at_tp2.keys()
    worst = max((at_tp1[n] - at_tp2[n]).abs().max().item() for n in at_tp1)
    assert worst < 1e-5, f"TP=2 checkpoint loaded at TP=1 differs by {worst:.2e}"


def _mismatch(rank, world_size, folder, other_folder, root):
    from policy_split_megatron.trainer.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

    _, model, optimizer = _policy(folder)
    save_checkpoint(root, 1, model, optimizer, {})
    _, other, other_opt = _policy(other_folder)
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(root / "step_000001", other, other_opt)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(root / "step_000099", other, other_opt)
    return True


def test_mismatched_or_missing_checkpoint_is_refused(tmp_path):
    folder = str(save_random_hf_model("qwen3", tmp_path / "a"))
    other = str(save_random_hf_model("qwen3", tmp_path / "b", hidden_size=64, intermediate_size=128))
    assert run_distributed(_mismatch, 1, folder, other, tmp_path / "ck", tp=1) == [True]


def _non_finite(rank, world_size, folder):
    from policy_split_megatron.trainer.optimizer import NonFiniteGradientError

    arch, model, optimizer = _policy(folder)
    before = [p.detach().clone() for p in model.parameters()]
    for name, p in model.named_parameters():
        p.grad = torch.zeros_like(p)
        if name.endswith("linear_fc2.weight"):
            p.grad[0, 0] = float("nan")
    with pytest.raises(NonFiniteGradientError, match=r"step 5: .*linear_fc2\.weight"):
        optimizer.step(step_index=5)
    return all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_non_finite_gradient_stops_the_step(tmp_path):
    folder = str(save_random_hf_model("llama", tmp_path / "hf"))
    assert run_distributed(_non_finite, 1, folder, tp=1) == [True]
