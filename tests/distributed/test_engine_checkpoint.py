"""Training checkpoints of megatron-core's engine: model + distributed-optimizer state, atomic.

- A run saved after 2 steps and resumed (fresh processes, a fresh engine) ends bit-identical to the
  uninterrupted run: at DP=2 with the distributed optimizer, at PP=2, at TP=2, and at PP=2 with 2
  virtual stages (the interleaved schedule).
- Resharding: saved at (TP=2, DP=1), resumed at (TP=1, DP=2), and the reverse, and saved at PP=2 with
  2 virtual stages, resumed in one process: the parameters and BOTH Adam moments re-saved by the
  resumed engine equal the saved ones, tensor by tensor in model space (`load_plain_tensors`).
- Each megatron-core 0.16.1 workaround of engine/optimizer_state.py is needed: without it the load
  fails (1, 2) or the resumed run diverges (3).
- Partial or mismatched checkpoints are refused with a clear error; the RNG state comes back.
"""

import pytest
import torch

from policy_split_megatron.model.tiny import save_random_hf_model
from tests.helpers.distributed import run_distributed
from tests.helpers.engine import batch, build_engine, full_weights, response_mask, train


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return str(save_random_hf_model("qwen3", tmp_path_factory.mktemp("ckpt") / "hf", seed=2))


def _run(rank, world_size, folder, root, phase, disable=None):
    """phase "full": 3 steps. "first": 2 steps then save. "resume": load, then step 3."""
    from policy_split_megatron.engine import optimizer_state
    from policy_split_megatron.trainer.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint

    if disable:  # a test of the workarounds themselves
        setattr(optimizer_state, disable, lambda *args, **kwargs: None)
    engine = build_engine(folder, lr=1e-2, total_steps=3)
    ids, lens = batch(engine.arch.vocab_size, seed=1)
    mask = response_mask(lens, ids.shape[1])
    if phase == "resume":
        common = load_checkpoint(latest_checkpoint(root), engine.modules, engine.optimizer)
        engine.scheduler.load_state_dict(common["scheduler"])
        after_load = torch.rand(3)
        train(engine, ids, lens, mask, steps=1, first_step=2)
        return full_weights(engine), after_load, common
    train(engine, ids, lens, mask, steps=2 if phase == "first" else 3)
    if phase == "first":
        save_checkpoint(root, 2, engine.modules, engine.optimizer,
                        {"sampler": {"position": 8}, "scheduler": engine.scheduler.state_dict()})
        return full_weights(engine), torch.rand(3), None
    return full_weights(engine), None, None


def _equal(a: dict, b: dict) -> list[str]:
    return [k for k in a if not torch.equal(a[k], b[k])]


@pytest.mark.parametrize("world,tp,pp,vpp", [(2, 1, 1, None), (2, 1, 2, None), (2, 2, 1, None), (2, 1, 2, 2)])
def test_resume_is_bit_identical(folder, tmp_path, world, tp, pp, vpp):
    full = run_distributed(_run, world, folder, None, "full", tp=tp, pp=pp, vpp=vpp)[0][0]
    run_distributed(_run, world, folder, tmp_path, "first", tp=tp, pp=pp, vpp=vpp)
    resumed = run_distributed(_run, world, folder, tmp_path, "resume", tp=tp, pp=pp, vpp=vpp)
    for rank, (weights, _, common) in enumerate(resumed):
        assert common == {"sampler": {"position": 8}, "scheduler": common["scheduler"], "step": 2,
                          "optimizer_restored": True}
        assert common["scheduler"]["num_steps"] == 2
        assert not _equal(full, weights), f"rank {rank}: resumed run differs in {_equal(full, weights)[:3]}"


def test_rng_state_is_restored(folder, tmp_path):
    saved = run_distributed(_run, 2, folder, tmp_path, "first", tp=1)
    resumed = run_distributed(_run, 2, folder, tmp_path, "resume", tp=1)
    for (_, drawn_after_save, _), (_, drawn_after_load, _) in zip(saved, resumed):
        assert torch.equal(drawn_after_save, drawn_after_load)


def _resave(rank, world_size, folder, source, target):
    from policy_split_megatron.trainer.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint

    engine = build_engine(folder, lr=1e-2, total_steps=3)
    common = load_checkpoint(latest_checkpoint(source), engine.modules, engine.optimizer)
    save_checkpoint(target, common["step"], engine.modules, engine.optimizer, {})
    return True


def _plain(rank, world_size, path):
    from megatron.core import dist_checkpointing

    from policy_split_megatron.cpu_shims import megatron_on_cpu

    with megatron_on_cpu():
        state = dist_checkpointing.load_plain_tensors(str(path))
    return {k: v.clone() for k, v in state.items() if isinstance(v, torch.Tensor)}


@pytest.mark.parametrize("saved,resumed", [  # (world, TP, PP, virtual stages)
    ((2, 2, 1, None), (2, 1, 1, None)),  # (TP=2, DP=1) -> (TP=1, DP=2)
    ((2, 1, 1, None), (2, 2, 1, None)),  # (TP=1, DP=2) -> (TP=2, DP=1)
    ((2, 1, 2, 2), (1, 1, 1, None)),  # PP=2 with 2 virtual stages -> one process
])
def test_reshard_keeps_parameters_and_moments(folder, tmp_path, saved, resumed):
    w, tp, pp, vpp = saved
    run_distributed(_run, w, folder, tmp_path / "a", "first", tp=tp, pp=pp, vpp=vpp)
    w, tp, pp, vpp = resumed
    run_distributed(_resave, w, folder, tmp_path / "a", tmp_path / "b", tp=tp, pp=pp, vpp=vpp)
    a = run_distributed(_plain, 1, tmp_path / "a" / "step_000002", tp=1)[0]
    b = run_distributed(_plain, 1, tmp_path / "b" / "step_000002", tp=1)[0]
    moments = [k for k in a if "exp_avg" in k]
    assert len(moments) > 10 and any("exp_avg_sq" in k for k in moments), sorted(a)[:8]
    assert any(a[k].abs().max() > 0 for k in moments), "the saved moments are all zero: the comparison is void"
    assert a.keys() == b.keys()
    assert not _equal(a, b), f"resharded state differs in {_equal(a, b)[:3]}"


@pytest.mark.parametrize("disable,failure", [
    ("materialize_adam_state", "AssertionError"),
    ("_install_copy_saved_keys", "KeyError: 'step'"),
])
def test_load_fails_without_workaround(folder, tmp_path, disable, failure):
    run_distributed(_run, 1, folder, tmp_path, "first", tp=1)
    with pytest.raises(AssertionError, match=failure):
        run_distributed(_run, 1, folder, tmp_path, "resume", disable, tp=1)


def test_resume_diverges_without_untied_steps(folder, tmp_path):
    full = run_distributed(_run, 1, folder, None, "full", tp=1)[0][0]
    run_distributed(_run, 1, folder, tmp_path, "first", tp=1)
    resumed = run_distributed(_run, 1, folder, tmp_path, "resume", "_untie_steps", tp=1)[0][0]
    assert _equal(full, resumed), "a shared AdamW step tensor went unnoticed"


def _refusals(rank, world_size, folder, other_folder, root):
    from policy_split_megatron.trainer.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint

    engine = build_engine(folder)
    save_checkpoint(root, 1, engine.modules, engine.optimizer, {})
    if rank == 0:
        (root / "step_000002.partial").mkdir()  # a save killed mid-way: never read
    torch.distributed.barrier()
    assert latest_checkpoint(root).name == "step_000001"
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        load_checkpoint(root / "step_000002.partial", engine.modules, engine.optimizer)
    other = build_engine(other_folder)
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(root / "step_000001", other.modules, other.optimizer)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(root / "step_000099", other.modules, other.optimizer)
    return True


def test_partial_mismatched_or_missing_checkpoint_is_refused(folder, tmp_path):
    other = str(save_random_hf_model("qwen3", tmp_path / "b", hidden_size=64, intermediate_size=128))
    assert run_distributed(_refusals, 1, folder, other, tmp_path / "ck", tp=1) == [True]
