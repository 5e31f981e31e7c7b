"""The TP layouts of the name table, against hand-built cases and as shard/unshard round trips."""

import pytest
import torch

from policy_split_megatron.bridge.families import hf_names, mappings_for
from policy_split_megatron.bridge.layouts import GateUpLayout, Layout, QKVLayout, RowLayout, VocabLayout
from policy_split_megatron.model.architecture import architecture_from_hf
from policy_split_megatron.model.tiny import FAMILIES, tiny_hf_config


def _arch(**overrides):
    return architecture_from_hf(tiny_hf_config("qwen2", **overrides))


def test_qkv_interleaves_by_query_group():
    # 4 query heads, 2 KV groups, head_dim 1: rows are labelled so the layout is readable.
    arch = _arch(num_attention_heads=4, num_key_value_heads=2, head_dim=1, hidden_size=4)
    q = torch.tensor([[10.0], [11.0], [12.0], [13.0]])  # heads q0..q3; q0,q1 -> group 0
    k = torch.tensor([[20.0], [21.0]])
    v = torch.tensor([[30.0], [31.0]])
    fused = QKVLayout().fuse(q, k, v, arch)
    assert fused.flatten().tolist() == [10, 11, 20, 30, 12, 13, 21, 31]
    # TP=2: rank 1 holds group 1 only.
    assert QKVLayout().shard([q, k, v], 1, 2, arch).flatten().tolist() == [12, 13, 21, 31]


def test_gate_up_pairs_per_rank():
    gate = torch.arange(4.0).reshape(4, 1)  # 0 1 2 3
    up = torch.arange(10.0, 14.0).reshape(4, 1)  # 10 11 12 13
    layout = GateUpLayout()
    assert layout.shard([gate, up], 0, 2, None).flatten().tolist() == [0, 1, 10, 11]
    assert layout.shard([gate, up], 1, 2, None).flatten().tolist() == [2, 3, 12, 13]


def test_vocab_pads_last_rank_with_zeros():
    arch = _arch(vocab_size=5)  # padded to 128 * TP
    emb = torch.arange(1.0, 6.0).reshape(5, 1)
    shards = [VocabLayout().shard([emb], r, 2, arch) for r in range(2)]
    assert shards[0].shape == (128, 1) and shards[0][:5].flatten().tolist() == [1, 2, 3, 4, 5]
    assert shards[0][5:].abs().sum() == 0 and shards[1].abs().sum() == 0
    assert torch.equal(VocabLayout().unshard(shards, arch)[0], emb)


@pytest.mark.parametrize("tp", [1, 2, 4])
@pytest.mark.parametrize(
    "layout,shapes",
    [
        (Layout(), [(8,)]),
        (RowLayout(), [(6, 8)]),
        (VocabLayout(), [(211, 8)]),
        (QKVLayout(), [(4 * 32, 8), (4 * 32, 8), (4 * 32, 8)]),
        (QKVLayout(), [(4 * 32,), (4 * 32,), (4 * 32,)]),
        (GateUpLayout(), [(8, 8), (8, 8)]),
    ],
)
def test_round_trip(layout, shapes, tp):
    arch = _arch(num_attention_heads=4, num_key_value_heads=4, head_dim=32)
    torch.manual_seed(0)
    hf = [torch.randn(s) for s in shapes]
    shards = [layout.shard(hf, r, tp, arch) for r in range(tp)]
    if layout.name == "replicated":
        shards = shards[:1]
    back = layout.unshard(shards, arch)
    assert len(back) == len(hf) and all(torch.equal(a, b) for a, b in zip(back, hf))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("tied", [False, True])
def test_table_names_match_transformers(family, tied):
    """The table names exactly the tensors transformers puts in the state dict."""
    from transformers import AutoModelForCausalLM

    config = tiny_hf_config(family, tie_word_embeddings=tied, num_hidden_layers=2)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    expected = set(model.state_dict())
    if tied:
        expected.discard("lm_head.weight")
    names = hf_names(architecture_from_hf(config))
    assert len(names) == len(set(names))
    assert set(names) == expected


def test_family_differences():
    qwen2 = {m.megatron for m in mappings_for(architecture_from_hf(tiny_hf_config("qwen2")))}
    qwen3 = {m.megatron for m in mappings_for(architecture_from_hf(tiny_hf_config("qwen3")))}
    llama = {m.megatron for m in mappings_for(architecture_from_hf(tiny_hf_config("llama")))}
    assert "decoder.layers.{layer}.self_attention.linear_qkv.bias" in qwen2 - llama
    assert "decoder.layers.{layer}.self_attention.q_layernorm.weight" in qwen3 - llama
