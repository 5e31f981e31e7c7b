"""Packed micro-batches (engine/packing.py): the plan by token budget, the THD layout handed to
megatron-core, and the way per-token values come back to the rows (hand-computed cases)."""

import pytest
import torch

from policy_split_megatron.engine.packing import aligned_length, build_pack, dummy_pack, pack_batch, plan_packs


def test_plan_keeps_order_and_budget():
    assert plan_packs([5, 3, 6, 2, 7, 20, 1], 12) == [[0, 1], [2, 3], [4], [5], [6]]
    # each row rounded up to the FP8 alignment before it counts against the budget
    assert plan_packs([5, 3, 6], 16, alignment=8) == [[0, 1], [2]]
    assert plan_packs([17], 16, alignment=16) == [[0]]  # too long: alone
    with pytest.raises(ValueError, match="token_budget"):
        plan_packs([1], 0)


def test_aligned_length():
    assert [aligned_length(n, 16) for n in (1, 16, 17)] == [16, 16, 32]
    assert aligned_length(0, 1) == 1


def test_pack_layout_and_unpacking():
    ids = torch.tensor([[1, 2, 3, 0], [4, 5, 0, 0], [6, 7, 8, 9]])
    lengths = torch.tensor([3, 2, 4])
    pack = build_pack(ids, lengths, [0, 2], alignment=1)
    assert pack.input_ids.tolist() == [[1, 2, 3, 6, 7, 8, 9]]
    assert pack.position_ids.tolist() == [[0, 1, 2, 0, 1, 2, 3]]
    assert pack.cu_seqlens.tolist() == [0, 3, 7] and pack.cu_seqlens.dtype == torch.int32
    assert pack.next_ids.tolist() == [[2, 3, 6, 7, 8, 9, 1]]
    assert (pack.width, pack.max_seqlen, pack.num_rows) == (4, 4, 2)
    # value v at packed position p is "about token p + 1"; rows get it at their own position
    values = torch.arange(10.0, 17.0).unsqueeze(0)
    assert pack.align_to_rows(values).tolist() == [[0.0, 10.0, 11.0, 0.0], [0.0, 13.0, 14.0, 15.0]]
    batch_values = torch.arange(12.0).reshape(3, 4)
    assert pack.gather_rows(batch_values).tolist() == [[0.0, 1.0, 2.0, 3.0], [8.0, 9.0, 10.0, 11.0]]


def test_alignment_padding_is_never_read_back():
    ids = torch.tensor([[1, 2, 3], [4, 5, 0]])
    pack = build_pack(ids, torch.tensor([3, 2]), [0, 1], alignment=4)
    assert pack.input_ids.tolist() == [[1, 2, 3, 3, 4, 5, 5, 5]]  # each row padded to 4
    assert pack.cu_seqlens.tolist() == [0, 4, 8] and pack.num_tokens % 4 == 0
    values = torch.arange(8.0).unsqueeze(0)
    assert pack.align_to_rows(values).tolist() == [[0.0, 0.0, 1.0], [0.0, 4.0, 0.0]]


def test_align_to_rows_passes_gradients():
    pack = build_pack(torch.tensor([[1, 2, 3]]), torch.tensor([3]), [0])
    values = torch.ones(1, 3, requires_grad=True)
    (pack.align_to_rows(values) * torch.tensor([[0.0, 2.0, 3.0]])).sum().backward()
    assert values.grad.tolist() == [[2.0, 3.0, 0.0]]  # the last position predicts nothing of the row


def test_dummy_and_batch_packing():
    dummy = dummy_pack(alignment=16)
    assert dummy.is_dummy and dummy.num_rows == 0 and dummy.num_tokens == 16
    assert dummy.gather_rows(torch.ones(3, 5, dtype=torch.bool)).tolist() == [[False] * 16]
    ids = torch.zeros(4, 6, dtype=torch.long)
    packs = pack_batch(ids, torch.tensor([6, 5, 4, 3]), 10, rows=[1, 3, 2])
    assert [p.rows.tolist() for p in packs] == [[1, 3], [2]]  # lengths 5 + 3, then 4
