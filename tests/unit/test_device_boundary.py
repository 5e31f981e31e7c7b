"""The one device boundary of a training step: rows are built on the host, then every per-token
tensor the losses read crosses to the engine's device once (UpdateBatch.to, Pack.to,
trainer.step._on_device). The "meta" device stands in for CUDA: a field left behind on the CPU (a
new UpdateBatch field nobody moves, say) is caught here, as it would be by a CUDA run, where CPU and
CUDA tensors cannot meet. Token ids, lengths and mini-batch indices stay on the host by design:
micro-batches are planned there."""

import dataclasses

import torch

from policy_split_megatron.algorithms.policy_split import build_quarters
from policy_split_megatron.engine.packing import build_pack, dummy_pack
from policy_split_megatron.rollout import Sample
from policy_split_megatron.trainer.step import _on_device
from policy_split_megatron.trainer.update import UpdateBatch

META = torch.device("meta")
HOST = {"input_ids", "lengths", "mini_batch"}


def _full_batch() -> UpdateBatch:
    """An UpdateBatch with every optional field set."""
    fields = {}
    for field in dataclasses.fields(UpdateBatch):
        if field.name in ("lengths", "mini_batch"):
            fields[field.name] = torch.tensor([3, 2])
        elif field.name in ("response_mask", "gradient_mask"):
            fields[field.name] = torch.ones(2, 3, dtype=torch.bool)
        elif field.name == "input_ids":
            fields[field.name] = torch.ones(2, 3, dtype=torch.long)
        else:
            fields[field.name] = torch.zeros(2, 3)
    return UpdateBatch(**fields)


def test_update_batch_moves_every_per_token_field():
    moved = _full_batch().to(META)
    for field in dataclasses.fields(UpdateBatch):
        value = getattr(moved, field.name)
        expected = "cpu" if field.name in HOST else "meta"
        assert value.device.type == expected, f"UpdateBatch.{field.name} is on {value.device}, not {expected}"


def test_packs_move_every_tensor():
    for pack in (build_pack(torch.tensor([[1, 2, 3], [4, 5, 0]]), torch.tensor([3, 2]), [0, 1], 2), dummy_pack(16)):
        moved = pack.to(META)
        left = [f.name for f in dataclasses.fields(moved)
                if isinstance(getattr(moved, f.name), torch.Tensor) and getattr(moved, f.name).device != META]
        assert not left, f"Pack.to left {left} behind"


def test_rows_cross_with_what_advantages_read():
    samples = [Sample(0, mode, k, (5, 6), (7, 8, 9), (-1.0, -1.0, -1.0), "stop", reward=float(k))
               for mode in (0, 1) for k in range(2)]
    rows = _on_device(build_quarters([(5, 6)], [(11, 5, 6)], samples, pad_token_id=0), META)
    for name in ("response_mask", "conditioning_mode", "source_mode", "group_ids", "partner_index", "rewards"):
        assert getattr(rows, name).device == META, name
    assert rows.input_ids.device.type == "cpu"  # planned into packs on the host
    empty = _on_device(build_quarters([], [], [], pad_token_id=0), META)  # a rank without prompts
    assert empty.rewards.device == META and empty.rewards.numel() == 0
