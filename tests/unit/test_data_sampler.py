"""The prompt sampler: deterministic, resumable mid-epoch, sharded over data-parallel ranks."""

import pytest

from policy_split_megatron.data import PromptSampler

DATA = [{"prompt": f"p{i}", "answer": str(i), "index": i} for i in range(10)]


def _indices(batches):
    return [[r["index"] for r in batch] for batch in batches]


def _take(sampler, n):
    return _indices(sampler.next_batch() for _ in range(n))


def test_unshuffled_order_by_hand():
    # 10 records, global batch 4, drop_last: epoch = [0..3], [4..7]; 8 and 9 are dropped; then epoch 1
    sampler = PromptSampler(DATA, 4, shuffle=False)
    assert sampler.batches_per_epoch == 2
    assert _take(sampler, 3) == [[0, 1, 2, 3], [4, 5, 6, 7], [0, 1, 2, 3]]
    assert (sampler.epoch, sampler.position, sampler.batches_taken) == (1, 1, 3)


def test_no_drop_last_wraps_within_the_epoch():
    sampler = PromptSampler(DATA, 4, shuffle=False, drop_last=False)
    assert sampler.batches_per_epoch == 3
    assert _take(sampler, 3) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 1]]


def test_deterministic_and_seeded():
    a = _take(PromptSampler(DATA, 5, seed=1), 6)
    b = _take(PromptSampler(DATA, 5, seed=1), 6)
    c = _take(PromptSampler(DATA, 5, seed=2), 6)
    assert a == b and a != c
    # each epoch (2 batches of 5) is a permutation of all 10 records, and epochs differ
    for epoch in range(3):
        assert sorted(a[2 * epoch] + a[2 * epoch + 1]) == list(range(10))
    assert a[0:2] != a[2:4]


def test_resume_mid_epoch_gives_the_same_following_batches():
    reference = PromptSampler(DATA, 3, seed=5)
    expected = _take(reference, 10)
    first = PromptSampler(DATA, 3, seed=5)
    _take(first, 4)  # 3 batches per epoch: stops at epoch 1, position 1 (mid-epoch)
    state = first.state_dict()
    assert (state["epoch"], state["position"]) == (1, 1)
    resumed = PromptSampler(DATA, 3, seed=5)
    resumed.load_state_dict(state)
    assert _take(resumed, 6) == expected[4:10]


def test_resume_at_epoch_end():
    a = PromptSampler(DATA, 5, seed=0)
    expected = _take(a, 4)
    b = PromptSampler(DATA, 5, seed=0)
    _take(b, 2)  # exactly one epoch: position 2 == batches_per_epoch
    c = PromptSampler(DATA, 5, seed=0)
    c.load_state_dict(b.state_dict())
    assert _take(c, 2) == expected[2:4]


def test_shards_are_disjoint_and_cover_each_global_batch():
    single = _take(PromptSampler(DATA, 4, seed=3), 4)
    rank0 = _take(PromptSampler(DATA, 4, seed=3, rank=0, world_size=2), 4)
    rank1 = _take(PromptSampler(DATA, 4, seed=3, rank=1, world_size=2), 4)
    for whole, r0, r1 in zip(single, rank0, rank1):
        assert len(r0) == len(r1) == 2
        assert not set(r0) & set(r1)
        assert r0 + r1 == whole  # rank r takes the r-th slice of the global batch
    # over one epoch (2 global batches of 4 of 10 records) the two ranks cover exactly what one rank would
    assert sorted(rank0[0] + rank0[1] + rank1[0] + rank1[1]) == sorted(single[0] + single[1])


def test_resume_with_a_different_world_size():
    one = PromptSampler(DATA, 4, seed=3)
    _take(one, 1)
    state = one.state_dict()
    expected = _take(one, 2)
    shards = []
    for rank in range(2):
        sampler = PromptSampler(DATA, 4, seed=3, rank=rank, world_size=2)
        sampler.load_state_dict(state)
        shards.append(_take(sampler, 2))
    assert [a + b for a, b in zip(*shards)] == expected


def test_state_mismatch_is_refused():
    state = PromptSampler(DATA, 4, seed=3).state_dict()
    with pytest.raises(ValueError, match="saved seed=3 but this run has seed=4"):
        PromptSampler(DATA, 4, seed=4).load_state_dict(state)
    with pytest.raises(ValueError, match="num_records"):
        PromptSampler(DATA[:8], 4, seed=3).load_state_dict(state)
    with pytest.raises(ValueError, match="global_batch_size"):
        PromptSampler(DATA, 2, seed=3).load_state_dict(state)


def test_argument_checks():
    with pytest.raises(ValueError, match="not divisible by the data-parallel size 3"):
        PromptSampler(DATA, 4, world_size=3, rank=0)
    with pytest.raises(ValueError, match="rank"):
        PromptSampler(DATA, 4, world_size=2, rank=2)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        PromptSampler(DATA, 16)
    assert len(PromptSampler(DATA, 16, drop_last=False).next_batch()) == 16


def test_batches_are_copies():
    sampler = PromptSampler(DATA, 2, shuffle=False)
    batch = sampler.next_batch()
    batch[0]["prompt"] = "changed"
    assert DATA[0]["prompt"] == "p0"
