"""Reading HF configs into ModelArchitecture, and refusing what cannot be represented."""

import pytest

from policy_split_megatron.model.architecture import UnsupportedModelError, architecture_from_hf
from policy_split_megatron.model.tiny import tiny_hf_config


def test_family_flags():
    assert architecture_from_hf(tiny_hf_config("qwen2")).qkv_bias is True
    qwen3 = architecture_from_hf(tiny_hf_config("qwen3"))
    assert qwen3.qk_norm and not qwen3.qkv_bias
    llama = architecture_from_hf(tiny_hf_config("llama", rope_theta=500000.0, rms_norm_eps=1e-5))
    assert (llama.rope_theta, llama.rms_norm_eps, llama.qkv_bias) == (500000.0, 1e-5, False)
    assert llama.num_key_value_heads == 2 and llama.head_dim == 32


def test_llama31_rope_scaling():
    config = tiny_hf_config(
        "llama",
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 8192},
    )
    assert architecture_from_hf(config).rope_scaling_factor == 8.0


def test_rejects_unrepresentable():
    with pytest.raises(UnsupportedModelError, match="model_type 'gpt2'"):
        architecture_from_hf({"model_type": "gpt2"})
    with pytest.raises(UnsupportedModelError, match="hidden_act"):
        architecture_from_hf(tiny_hf_config("llama", hidden_act="gelu"))
    with pytest.raises(UnsupportedModelError, match="rope_type 'yarn'"):
        architecture_from_hf(tiny_hf_config("qwen3", rope_scaling={"rope_type": "yarn", "factor": 4.0}))


def test_parallel_layout_errors_name_the_problem():
    arch = architecture_from_hf(tiny_hf_config("llama", num_attention_heads=4, num_key_value_heads=2))
    arch.validate_parallel(2, 2)
    with pytest.raises(ValueError, match="num_key_value_heads=2 is not divisible by TP=4"):
        arch.validate_parallel(4, 1)
    with pytest.raises(ValueError, match="num_hidden_layers=4 is not divisible by PP=3"):
        arch.validate_parallel(1, 3)


def test_vocab_padding():
    arch = architecture_from_hf(tiny_hf_config("qwen2", vocab_size=211))
    assert arch.padded_vocab_size(1) == 256 and arch.padded_vocab_size(2) == 256
    assert arch.padded_vocab_size(4) == 512
