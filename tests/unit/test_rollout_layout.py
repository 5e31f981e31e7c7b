"""Replica layout, prompt sharding, weight-sync buckets, request seeds, padded tensors and engine
state errors: the parts of the rollout engine that need neither vLLM nor process groups."""

import pytest
import torch

from policy_split_megatron.rollout import (
    EngineStateError,
    ReplicaLayout,
    RolloutConfig,
    Sample,
    VLLMRolloutEngine,
    iter_buckets,
    samples_to_tensors,
    shard_prompts,
)
from policy_split_megatron.rollout.requests import request_seed
from policy_split_megatron.rollout.vllm_engine import eos_ids_from_folder


def test_replicas_are_consecutive_rank_blocks():
    layouts = [ReplicaLayout(8, 2, r) for r in range(8)]
    assert [l.replica_index for l in layouts] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert layouts[5].replica_ranks() == [4, 5] and layouts[0].num_replicas == 4
    assert [l.is_replica_leader for l in layouts[:2]] == [True, False]


def test_engine_tp_must_divide_the_world_and_be_one_on_cpu():
    with pytest.raises(ValueError, match="engine_tensor_parallel=3 must divide the world size 4"):
        ReplicaLayout(4, 3, 0)
    with pytest.raises(ValueError, match="engine_tensor_parallel=2 is not supported on CPU"):
        ReplicaLayout(4, 2, 0).check_device(on_cuda=False)
    ReplicaLayout(4, 2, 0).check_device(on_cuda=True)


def test_prompts_are_split_evenly_and_completely():
    prompts = list(range(7))
    shards = [shard_prompts(prompts, ReplicaLayout(6, 2, r)) for r in range(0, 6, 2)]
    assert shards == [[0, 1, 2], [3, 4], [5, 6]]
    assert shard_prompts(prompts, ReplicaLayout(6, 2, 1)) == shards[0]  # same replica, same share
    assert shard_prompts([], ReplicaLayout(2, 1, 1)) == []


def test_buckets_respect_the_byte_bound_and_keep_order():
    # float32, 4 bytes per element: 40, 40, 120 (over the bound: a bucket of its own), 20, 400, 4 bytes
    tensors = [(f"t{i}", torch.zeros(n)) for i, n in enumerate([10, 10, 30, 5, 100, 1])]
    buckets = list(iter_buckets(tensors, bucket_bytes=80))
    assert [[name for name, _ in b] for b in buckets] == [["t0", "t1"], ["t2"], ["t3"], ["t4"], ["t5"]]
    assert all(sum(t.numel() * 4 for _, t in b) <= 80 for b in buckets if len(b) > 1)
    assert list(iter_buckets([], 10)) == []
    with pytest.raises(ValueError):
        list(iter_buckets(tensors, 0))


def test_request_seeds_are_deterministic_and_distinct():
    seeds = {request_seed(0, step, p, m) for step in range(3) for p in range(100) for m in (0, 1)}
    assert len(seeds) == 600 and all(0 <= s < 2**31 for s in seeds)
    assert request_seed(5, 1, 2, 0) == request_seed(5, 1, 2, 0) != request_seed(6, 1, 2, 0)
    assert request_seed(None, 0, 0, 0) is None


def test_samples_to_tensors_aligns_masks_and_logprobs():
    samples = [
        Sample(0, 0, 0, (5, 6, 7), (8, 2), (-0.5, -1.5), "stop"),
        Sample(0, 1, 0, (5, 9, 6, 7), (3, 4, 4), (-0.1, -0.2, -0.3), "length"),
    ]
    batch = samples_to_tensors(samples, pad_token_id=0)
    assert batch.input_ids.tolist() == [[5, 6, 7, 8, 2, 0, 0], [5, 9, 6, 7, 3, 4, 4]]
    assert batch.response_mask.tolist()[0] == [False, False, False, True, True, False, False]
    assert batch.engine_log_probs[1, 4:].tolist() == pytest.approx([-0.1, -0.2, -0.3])
    assert batch.attention_mask.sum(-1).tolist() == [5, 7] and batch.truncated.tolist() == [False, True]
    assert batch.mode.tolist() == [0, 1]
    with pytest.raises(ValueError, match="sample 0"):
        samples_to_tensors([Sample(0, 0, 0, (1,), (2,), (), "stop")], 0)


def test_engine_methods_need_a_started_engine(tmp_path):
    engine = VLLMRolloutEngine(RolloutConfig(model_path=str(tmp_path)))
    with pytest.raises(EngineStateError, match="not started"):
        engine.generate([])
    with pytest.raises(EngineStateError, match="not started"):
        engine.sleep()
    with pytest.raises(FileNotFoundError, match="rollout.model_path.*config.json"):
        engine.start()
    engine.shutdown()
    with pytest.raises(EngineStateError, match="shut down"):
        engine.start()


def test_engine_refuses_a_model_without_eos(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "qwen2"}')
    assert eos_ids_from_folder(tmp_path) == ()
    with pytest.raises(ValueError, match="rollout.eos_token_ids"):
        VLLMRolloutEngine(RolloutConfig(model_path=str(tmp_path))).start()
    (tmp_path / "generation_config.json").write_text('{"eos_token_id": [7, 9]}')
    assert eos_ids_from_folder(tmp_path) == (7, 9)
