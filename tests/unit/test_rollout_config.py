"""Rollout config validation: every bad value is refused at construction with the field's name."""

import pytest

from policy_split_megatron.rollout import RolloutConfig, SamplingConfig, rollout_config_from_dict


def make(**overrides) -> RolloutConfig:
    return RolloutConfig(**{"model_path": "/models/tiny", **overrides})


def test_defaults_follow_the_paper():
    cfg = make()
    assert (cfg.n_normal, cfg.n_explore) == (4, 4)
    assert cfg.he_prompt_placement == "system" and "High Entropy" in cfg.he_system_prompt
    assert cfg.max_prompt_len(0) == cfg.max_model_len - cfg.normal.max_tokens


@pytest.mark.parametrize(
    "field,value",
    [
        ("model_path", ""),
        ("engine_tensor_parallel", 0),
        ("engine_tensor_parallel", 1.5),
        ("n_normal", -1),
        ("n_explore", True),
        ("he_system_prompt", "   "),
        ("he_prompt_placement", "assistant"),
        ("use_chat_template", "yes"),
        ("max_model_len", 1),
        ("dtype", "fp8"),
        ("load_format", "pt"),
        ("eos_token_ids", []),
        ("eos_token_ids", [-1]),
        ("logprobs_mode", "raw_logits"),
        ("gpu_memory_utilization", 0.0),
        ("kv_cache_bytes", 10),
        ("max_num_seqs", 0),
        ("sleep_level", 3),
        ("weight_sync_bucket_bytes", 0),
        ("on_bad_prompt", "ignore"),
        ("seed", -1),
    ],
)
def test_bad_rollout_fields_are_named(field, value):
    with pytest.raises(ValueError, match=rf"rollout\.{field}"):
        make(**{field: value})


def test_modes_need_at_least_one_sample():
    with pytest.raises(ValueError, match="n_normal"):
        make(n_normal=0, n_explore=0)
    assert make(n_normal=0, n_explore=2).samples_per_mode(1) == 2  # explore-only is allowed


@pytest.mark.parametrize(
    "field,value",
    [("temperature", 0.0), ("temperature", "1"), ("top_p", 0.0), ("top_p", 1.5), ("top_k", -2),
     ("max_tokens", 0), ("stop_token_ids", [1, "2"]), ("stop", [""]), ("seed", -3)],
)
def test_bad_sampling_fields_are_named(field, value):
    with pytest.raises(ValueError, match=rf"sampling\.{field}"):
        SamplingConfig(**{field: value})


def test_max_tokens_must_leave_room_for_the_prompt():
    with pytest.raises(ValueError, match=r"rollout\.explore\.max_tokens"):
        make(max_model_len=64, normal=SamplingConfig(max_tokens=8), explore=SamplingConfig(max_tokens=64))


def test_stop_strings_need_the_engine_tokenizer():
    with pytest.raises(ValueError, match=r"rollout\.normal\.stop.*skip_tokenizer_init"):
        make(normal=SamplingConfig(stop=("###",)))
    assert make(normal=SamplingConfig(stop=["###"]), skip_tokenizer_init=False).normal.stop == ("###",)


def test_from_dict_builds_nested_sampling_and_rejects_unknown_keys():
    cfg = rollout_config_from_dict({"model_path": "/m", "explore": {"temperature": 1.2, "max_tokens": 64},
                                    "eos_token_ids": [2, 5]})
    assert isinstance(cfg.explore, SamplingConfig) and cfg.explore.temperature == 1.2
    assert cfg.eos_token_ids == (2, 5)
    with pytest.raises(ValueError, match="unknown field.*n_samples"):
        rollout_config_from_dict({"model_path": "/m", "n_samples": 3})
    with pytest.raises(ValueError, match="unknown field.*temp"):
        rollout_config_from_dict({"model_path": "/m", "normal": {"temp": 1.0}})
