"""The name table: the one place that knows Hugging Face and Megatron parameter names.

Checkpoint conversion (tools/) and weight sync to the rollout engine (rollout/) both go through
`mappings_for(arch)`; nothing else in the project spells a parameter name.

Names are those of megatron-core's local layer spec. The Transformer Engine spec fuses the two
pre-norms into the following linear layers; `TE_ALIASES` maps those names (the same aliasing that
megatron-core's `sharded_state_dict_keys_map` uses, so distributed checkpoints load across specs).
"""

from __future__ import annotations

from policy_split_megatron.bridge.layouts import (
    GateUpLayout,
    Layout,
    ParamMapping,
    QKVLayout,
    RowLayout,
    VocabLayout,
)
from policy_split_megatron.model.architecture import ModelArchitecture

_REPLICATED, _ROW, _VOCAB, _QKV, _GATE_UP = Layout(), RowLayout(), VocabLayout(), QKVLayout(), GateUpLayout()

_L = "decoder.layers.{layer}."
_H = "model.layers.{layer}."

TE_ALIASES = {
    "input_layernorm.weight": "self_attention.linear_qkv.layer_norm_weight",
    "pre_mlp_layernorm.weight": "mlp.linear_fc1.layer_norm_weight",
}


def _qkv(suffix: str) -> tuple[str, ...]:
    return tuple(f"{_H}self_attn.{p}_proj.{suffix}" for p in ("q", "k", "v"))


def mappings_for(arch: ModelArchitecture) -> list[ParamMapping]:
    """Every Megatron parameter of the family, in a fixed order (embedding, layers, final norm,
    output layer). Llama, Qwen2 and Qwen3 share the Llama layout; they differ only in QKV bias
    (Qwen2, or Llama with attention_bias) and QK-norm (Qwen3)."""
    table = [ParamMapping("embedding.word_embeddings.weight", ("model.embed_tokens.weight",), _VOCAB)]
    table += [
        ParamMapping(_L + "input_layernorm.weight", (_H + "input_layernorm.weight",), _REPLICATED),
        ParamMapping(_L + "self_attention.linear_qkv.weight", _qkv("weight"), _QKV),
    ]
    if arch.qkv_bias:
        table.append(ParamMapping(_L + "self_attention.linear_qkv.bias", _qkv("bias"), _QKV))
    if arch.qk_norm:
        table += [
            ParamMapping(_L + "self_attention.q_layernorm.weight", (_H + "self_attn.q_norm.weight",), _REPLICATED),
            ParamMapping(_L + "self_attention.k_layernorm.weight", (_H + "self_attn.k_norm.weight",), _REPLICATED),
        ]
    table += [
        ParamMapping(_L + "self_attention.linear_proj.weight", (_H + "self_attn.o_proj.weight",), _ROW),
        ParamMapping(_L + "pre_mlp_layernorm.weight", (_H + "post_attention_layernorm.weight",), _REPLICATED),
        ParamMapping(
            _L + "mlp.linear_fc1.weight", (_H + "mlp.gate_proj.weight", _H + "mlp.up_proj.weight"), _GATE_UP
        ),
        ParamMapping(_L + "mlp.linear_fc2.weight", (_H + "mlp.down_proj.weight",), _ROW),
        ParamMapping("decoder.final_layernorm.weight", ("model.norm.weight",), _REPLICATED),
    ]
    # Tied models have no lm_head in HF; megatron's last stage still holds `output_layer.weight`
    # as a copy of the embedding when the embedding lives on another pipeline stage.
    lm_head = "model.embed_tokens.weight" if arch.tie_word_embeddings else "lm_head.weight"
    table.append(ParamMapping("output_layer.weight", (lm_head,), _VOCAB))
    return table


def hf_names(arch: ModelArchitecture) -> list[str]:
    """All HF tensor names of the model, in table order, layers expanded."""
    names: list[str] = []
    for mapping in mappings_for(arch):
        if mapping.megatron == "output_layer.weight" and arch.tie_word_embeddings:
            continue
        layers = range(arch.num_layers) if mapping.per_layer else [None]
        for layer in layers:
            names += [n.format(layer=layer) for n in mapping.hf]
    return names
