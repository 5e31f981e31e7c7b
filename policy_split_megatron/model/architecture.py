"""One normalised description of a dense decoder-only model, read from a Hugging Face config.

Supported families: Llama (3.x), Qwen2/2.5 (QKV bias), Qwen3 (QK-norm). Everything downstream
(the Megatron config, the layer spec, the name table in `bridge/`) reads this dataclass, never the
HF config, so a new family means one new entry here and one table in `bridge/families.py`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

# HF `model_type` -> (family name, QKV bias, QK-norm)
_FAMILIES: dict[str, tuple[str, bool | None, bool]] = {
    "llama": ("llama", None, False),  # QKV bias follows `attention_bias` (False for Llama 3.x)
    "qwen2": ("qwen2", True, False),  # Qwen2/2.5 always have QKV bias
    "qwen3": ("qwen3", None, True),  # Qwen3: per-head RMSNorm on q and k, bias per `attention_bias`
}

# Megatron's Llama-3.1 RoPE scaling hard-codes these; other values cannot be represented.
_LLAMA3_ROPE_FIXED = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


class UnsupportedModelError(ValueError):
    """The HF config describes something this bridge cannot represent exactly."""


@dataclass(frozen=True)
class ModelArchitecture:
    family: str
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    ffn_hidden_size: int
    vocab_size: int
    max_position_embeddings: int
    rope_theta: float
    rms_norm_eps: float
    qkv_bias: bool
    qk_norm: bool
    tie_word_embeddings: bool
    rope_scaling_factor: float | None = None  # Llama-3.1 style scaling, None when absent

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def padded_vocab_size(self, tensor_parallel: int, multiple: int = 128) -> int:
        """Megatron shards the vocabulary evenly over TP ranks: pad to a multiple of
        `multiple * tensor_parallel` (Megatron-LM's make-vocab-size-divisible-by rule). The padded
        rows are zero; the log-prob op leaves their logits out (see `builder.forward_logits`)."""
        unit = multiple * tensor_parallel
        return -(-self.vocab_size // unit) * unit

    def validate_parallel(self, tensor_parallel: int, pipeline_parallel: int, virtual_pipeline: int = 1) -> None:
        """Refuse layouts that cannot shard this model, before anything is built."""
        problems = []
        if self.num_attention_heads % tensor_parallel:
            problems.append(f"num_attention_heads={self.num_attention_heads} is not divisible by TP={tensor_parallel}")
        if self.num_key_value_heads % tensor_parallel:
            problems.append(
                f"num_key_value_heads={self.num_key_value_heads} is not divisible by TP={tensor_parallel} "
                "(KV-head replication is not supported by the weight bridge)"
            )
        if self.ffn_hidden_size % tensor_parallel:
            problems.append(f"intermediate_size={self.ffn_hidden_size} is not divisible by TP={tensor_parallel}")
        if self.num_layers % (pipeline_parallel * virtual_pipeline):
            stages = f"PP={pipeline_parallel}" + (f" x virtual stages={virtual_pipeline}" if virtual_pipeline > 1 else "")
            problems.append(f"num_hidden_layers={self.num_layers} is not divisible by {stages}")
        if problems:
            from policy_split_megatron.errors import ConfigError

            raise ConfigError(
                f"{self.family} model cannot use tensor_parallel={tensor_parallel}, "
                f"pipeline_parallel={pipeline_parallel}: " + "; ".join(problems)
            )


def _get(config: Any, name: str, default: Any = None) -> Any:
    return getattr(config, name, default) if not isinstance(config, dict) else config.get(name, default)


def _rope(config: Any) -> tuple[float, float | None]:
    params = _get(config, "rope_parameters") or {}
    scaling = _get(config, "rope_scaling") or {}
    merged = {**scaling, **params}
    theta = merged.get("rope_theta", _get(config, "rope_theta", 10000.0))
    rope_type = merged.get("rope_type", merged.get("type", "default")) or "default"
    if rope_type == "default":
        return float(theta), None
    if rope_type == "llama3":
        for key, expected in _LLAMA3_ROPE_FIXED.items():
            if float(merged.get(key, expected)) != float(expected):
                raise UnsupportedModelError(
                    f"rope scaling '{key}'={merged.get(key)}: megatron-core supports only {expected}"
                )
        return float(theta), float(merged["factor"])
    raise UnsupportedModelError(f"rope_type '{rope_type}' is not supported (only default and llama3)")


def architecture_from_hf(config: Any) -> ModelArchitecture:
    """Read an HF `PretrainedConfig` (or its dict) into a ModelArchitecture, refusing what the
    Megatron model would not reproduce exactly (sliding windows, MoE, unknown activations)."""
    model_type = _get(config, "model_type")
    if model_type not in _FAMILIES:
        raise UnsupportedModelError(
            f"model_type '{model_type}' is not supported; supported: {', '.join(sorted(_FAMILIES))}"
        )
    family, forced_bias, qk_norm = _FAMILIES[model_type]
    if _get(config, "hidden_act", "silu") != "silu":
        raise UnsupportedModelError(f"hidden_act '{_get(config, 'hidden_act')}' is not supported (SwiGLU needs silu)")
    if _get(config, "use_sliding_window", False):
        raise UnsupportedModelError("sliding-window attention is not supported")
    if _get(config, "mlp_bias", False):
        raise UnsupportedModelError("mlp_bias=True is not supported")
    heads = int(_get(config, "num_attention_heads"))
    hidden = int(_get(config, "hidden_size"))
    head_dim = _get(config, "head_dim") or hidden // heads
    theta, scaling = _rope(config)
    qkv_bias = forced_bias if forced_bias is not None else bool(_get(config, "attention_bias", False))
    return ModelArchitecture(
        family=family,
        num_layers=int(_get(config, "num_hidden_layers")),
        hidden_size=hidden,
        num_attention_heads=heads,
        num_key_value_heads=int(_get(config, "num_key_value_heads") or heads),
        head_dim=int(head_dim),
        ffn_hidden_size=int(_get(config, "intermediate_size")),
        vocab_size=int(_get(config, "vocab_size")),
        max_position_embeddings=int(_get(config, "max_position_embeddings", 4096)),
        rope_theta=theta,
        rms_norm_eps=float(_get(config, "rms_norm_eps", 1e-6)),
        qkv_bias=qkv_bias,
        qk_norm=qk_norm,
        tie_word_embeddings=bool(_get(config, "tie_word_embeddings", False)),
        rope_scaling_factor=scaling,
    )
