"""The pieces of checkpoint conversion that need no process group: shard planning, metadata files,
the HF shape table against transformers' own models, the architecture checks against checkpoint
headers, and the path checks of checkpoints."""

import json
from pathlib import Path

import pytest
import torch

from policy_split_megatron.bridge.checkpoint_convert import (
    CheckpointInfo,
    ConversionError,
    check_checkpoint_architecture,
    check_hf_architecture,
    expected_hf_shapes,
    parse_size,
    resolve_checkpoint,
)
from policy_split_megatron.bridge.hf_folder import (
    HFFolderError,
    _generation_config,
    _replace,
    check_config_matches,
    copy_hf_metadata,
    plan_shards,
    resolve_dtype,
    shard_file_name,
)
from policy_split_megatron.model import architecture_from_hf
from policy_split_megatron.model.tiny import FAMILIES, random_hf_model, tiny_hf_config
from policy_split_megatron.trainer.checkpoint import CheckpointError


def test_plan_shards_packs_in_order_and_isolates_large_tensors():
    tensors = [("a", (10,)), ("b", (10,)), ("c", (30,)), ("d", (5,)), ("e", (5,))]
    # float32: 40, 40, 120, 20, 20 bytes; at most 100 bytes per shard
    assert plan_shards(tensors, torch.float32, 100) == [["a", "b"], ["c"], ["d", "e"]]
    assert plan_shards(tensors, torch.bfloat16, 100) == [["a", "b", "c"], ["d", "e"]]
    assert plan_shards(tensors, torch.float32, 10**9) == [["a", "b", "c", "d", "e"]]
    assert plan_shards([], torch.float32, 100) == []
    with pytest.raises(HFFolderError, match="max_shard_bytes"):
        plan_shards(tensors, torch.float32, 0)
    assert shard_file_name(0, 3) == "model-00001-of-00003.safetensors"


def test_sizes_and_dtypes():
    assert parse_size("4GB") == 4 * 10**9
    assert parse_size("2GiB") == 2 * 1024**3
    assert parse_size("150KB") == 150_000
    assert parse_size("1048576") == 1048576
    assert resolve_dtype("bfloat16") is torch.bfloat16 and resolve_dtype(torch.float32) is torch.float32
    with pytest.raises(HFFolderError, match="float16"):
        resolve_dtype("float16")


def test_metadata_copy_and_default_generation_config(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "merges.txt", "vocab.json",
                 "chat_template.jinja", "model.safetensors", "README.md", "pytorch_model.bin"):
        (src / name).write_text("{}")
    copied = copy_hf_metadata(src, tmp_path / "dst")
    assert sorted(copied) == ["chat_template.jinja", "config.json", "merges.txt", "tokenizer.json",
                              "tokenizer_config.json", "vocab.json"]
    assert sorted(p.name for p in (tmp_path / "dst").iterdir()) == sorted(copied)
    with pytest.raises(HFFolderError, match="no config.json"):
        copy_hf_metadata(tmp_path / "dst" / "missing", tmp_path / "x")
    generation = _generation_config({"bos_token_id": 1, "eos_token_id": [2, 7], "pad_token_id": None})
    assert generation["bos_token_id"] == 1 and generation["eos_token_id"] == [2, 7] and "pad_token_id" not in generation


def test_replace_swaps_the_folder(tmp_path):
    out, partial = tmp_path / "hf", tmp_path / "hf.partial"
    out.mkdir()
    (out / "stale.safetensors").write_text("old")
    partial.mkdir()
    (partial / "config.json").write_text("new")
    _replace(partial, out)
    assert [p.name for p in out.iterdir()] == ["config.json"]
    assert not partial.exists() and not (tmp_path / "hf.replaced").exists()


def test_config_must_describe_the_model():
    config = tiny_hf_config("qwen3").to_dict()
    arch = architecture_from_hf(config)
    check_config_matches(config, arch, "config.json")
    with pytest.raises(HFFolderError, match="num_hidden_layers: 3 in config.json but 4 in the model"):
        check_config_matches(dict(config, num_hidden_layers=3), arch, "config.json")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("tied", [False, True])
def test_hf_shape_table_matches_transformers(family, tied):
    config = tiny_hf_config(family, tie_word_embeddings=tied, num_hidden_layers=2)
    model = random_hf_model(config)
    theirs = {n: tuple(t.shape) for n, t in model.state_dict().items() if not (tied and n == "lm_head.weight")}
    ours = {n: shape for n, (shape, _) in expected_hf_shapes(architecture_from_hf(config)).items()}
    assert ours == theirs


def _megatron_shapes(arch, tp: int) -> dict:
    """Global shapes of the model tensors in a megatron-core checkpoint saved at `tp` (layers stacked)."""
    h, f, d, n = arch.hidden_size, arch.ffn_hidden_size, arch.head_dim, arch.num_layers
    q, kv = arch.num_attention_heads * d, arch.num_key_value_heads * d
    rows = arch.padded_vocab_size(tp)
    shapes = {
        "embedding.word_embeddings.weight": (rows, h),
        "decoder.layers.self_attention.linear_qkv.layer_norm_weight": (n, h),
        "decoder.layers.self_attention.linear_qkv.weight": (n, q + 2 * kv, h),
        "decoder.layers.self_attention.linear_proj.weight": (n, h, q),
        "decoder.layers.mlp.linear_fc1.layer_norm_weight": (n, h),
        "decoder.layers.mlp.linear_fc1.weight": (n, 2 * f, h),
        "decoder.layers.mlp.linear_fc2.weight": (n, h, f),
        "decoder.final_layernorm.weight": (h,),
    }
    if arch.qkv_bias:
        shapes["decoder.layers.self_attention.linear_qkv.bias"] = (n, q + 2 * kv)
    if arch.qk_norm:
        shapes["decoder.layers.self_attention.q_layernorm.weight"] = (n, d)
        shapes["decoder.layers.self_attention.k_layernorm.weight"] = (n, d)
    if not arch.tie_word_embeddings:
        shapes["output_layer.weight"] = (rows, h)
    return shapes


@pytest.mark.parametrize("family", FAMILIES)
def test_checkpoint_architecture_check_names_each_field(family):
    arch = architecture_from_hf(tiny_hf_config(family, vocab_size=300))
    info = CheckpointInfo(Path("ck"), _megatron_shapes(arch, tp=2), torch.float32, {"world_size": 2})
    check_checkpoint_architecture(arch, info, "config.json")  # saved at TP=2, read with the same config

    def refused(match, **changes):
        other = architecture_from_hf(tiny_hf_config(family, **{"vocab_size": 300, **changes}))
        with pytest.raises(ConversionError, match=match):
            check_checkpoint_architecture(other, info, "config.json")

    refused("hidden_size: 256 in config.json, 128", hidden_size=256)
    refused("num_hidden_layers: 2 in config.json, 4", num_hidden_layers=2)
    refused("intermediate_size: 512 in config.json, 256", intermediate_size=512)
    refused("num_attention_heads: 8 in config.json, 4", num_attention_heads=8, num_key_value_heads=2)
    refused("num_key_value_heads: 4 in config.json, 2", num_key_value_heads=4)
    refused("vocab_size: 700 in config.json", vocab_size=700)
    refused("tie_word_embeddings: true in config.json", tie_word_embeddings=True)
    if family != "qwen3":
        refused("num_attention_heads x head_dim: 4 x 64 = 256", head_dim=64)
    else:
        refused("head_dim: 64 in config.json, 32", head_dim=64)
    qwen3_config = architecture_from_hf(tiny_hf_config("qwen3", vocab_size=300))
    if family != "qwen3":
        with pytest.raises(ConversionError, match="model_type: config.json says qwen3"):
            check_checkpoint_architecture(qwen3_config, info, "config.json")
    if family == "qwen2":
        llama = architecture_from_hf(tiny_hf_config("llama", vocab_size=300))
        with pytest.raises(ConversionError, match="attention bias"):
            check_checkpoint_architecture(llama, info, "config.json")


def test_hf_architecture_check(tmp_path):
    folder = tmp_path / "hf"
    random_hf_model(tiny_hf_config("qwen2", num_hidden_layers=2)).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    check_hf_architecture(architecture_from_hf(config), folder)
    with pytest.raises(ConversionError, match=r"q_proj\.weight has shape \(128, 128\), config.json implies "
                                              r"\(256, 128\) \(num_attention_heads=8 x head_dim=32"):
        check_hf_architecture(architecture_from_hf(dict(config, num_attention_heads=8)), folder)
    as_llama = architecture_from_hf(dict(config, model_type="llama"))
    with pytest.raises(ConversionError, match=r"hold model\.layers\.0\.self_attn\.q_proj\.bias"):
        check_hf_architecture(as_llama, folder)
    with pytest.raises(ConversionError, match="no model.safetensors"):
        check_hf_architecture(as_llama, tmp_path)


def test_checkpoint_paths(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_checkpoint(tmp_path / "none")
    root = tmp_path / "checkpoints"
    (root / "step_000003").mkdir(parents=True)
    (root / "step_000003" / "metadata.json").write_text("{}")
    (root / "step_000004.partial").mkdir()
    with pytest.raises(CheckpointError, match=r"partial checkpoint"):
        resolve_checkpoint(root / "step_000004.partial")
    with pytest.raises(CheckpointError, match=r"complete checkpoints \(step_000003\) but no `latest`"):
        resolve_checkpoint(root)
    assert resolve_checkpoint(root / "step_000003") == root / "step_000003"
    (root / "latest").write_text("step_000003\n")
    assert resolve_checkpoint(root) == root / "step_000003"
