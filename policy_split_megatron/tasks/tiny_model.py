"""The embedded default's model: a tiny Qwen3 (HF config), randomly initialised the normal HF way.

    Qwen3: 4 layers, hidden 128, 4 attention heads x head_dim 32, 2 KV heads, SwiGLU MLP 384,
           vocab 101 (the char tokenizer), max_position_embeddings 1024, untied embeddings, RoPE 10000
    parameters: 813,696 = embeddings 2 x 12,928 + 4 layers x 196,928 + final norm 128

head_dim is 32 because vLLM's CPU attention rejects 16. max_position_embeddings is 1024 because the
high-entropy prompt of the paper is 443 characters: a character-level HE prompt is ~480 tokens before the
response. `write_tiny_model` writes config.json + model.safetensors (float32), generation_config.json and
the char tokenizer into one folder, which is what the Megatron bridge and vLLM load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from policy_split_megatron.tasks.char_tokenizer import (
    BOS_ID,
    EOS_ID,
    MODEL_MAX_LENGTH,
    PAD_ID,
    VOCAB_SIZE,
    save_char_tokenizer,
)

TINY_MODEL_FAMILY = "qwen3"


def tiny_model_config(**overrides: Any):
    """The HF `Qwen3Config` of the embedded model; keywords override fields (e.g. num_hidden_layers=2)."""
    from transformers import Qwen3Config

    kwargs: dict[str, Any] = dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=MODEL_MAX_LENGTH,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        attention_bias=False,
        tie_word_embeddings=False,
        initializer_range=0.02,
        use_sliding_window=False,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
    )
    kwargs.update(overrides)
    config = Qwen3Config(**kwargs)
    if config.head_dim < 32:
        raise ValueError(f"head_dim must be >= 32 (vLLM's CPU attention), got {config.head_dim}")
    if config.vocab_size < VOCAB_SIZE:
        raise ValueError(f"vocab_size must be >= the char tokenizer's {VOCAB_SIZE}, got {config.vocab_size}")
    return config


def count_parameters(config) -> int:
    """Parameter count of a Qwen3/Llama-style config, from the shapes (no model is built)."""
    h, f, v, d = config.hidden_size, config.intermediate_size, config.vocab_size, config.head_dim
    q, kv = config.num_attention_heads * d, config.num_key_value_heads * d
    attention = h * q + 2 * h * kv + q * h
    if getattr(config, "attention_bias", False):
        attention += q + 2 * kv + h
    qk_norm = 2 * d if getattr(config, "model_type", "") == "qwen3" else 0
    layer = attention + qk_norm + 3 * h * f + 2 * h
    embeddings = v * h * (1 if config.tie_word_embeddings else 2)
    return embeddings + config.num_hidden_layers * layer + h


def build_tiny_model(seed: int = 0, **overrides: Any):
    """A freshly initialised `Qwen3ForCausalLM` (float32, HF's normal init with std initializer_range)."""
    import torch
    from transformers import AutoModelForCausalLM

    config = tiny_model_config(**overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # HF's init zeroes the input embedding of pad_token_id. A policy can still sample <|pad|>, and the
    # token after it then reads a zero vector, whose first RMSNorm has a gradient 1/sqrt(eps) = 1000
    # times its usual size: one such response took the global gradient norm from ~0.5 to 2,774
    # (docs/embedded_default.md, "The gradient-norm spike"). The pad row is drawn like every other
    # row, from its own generator, so the other weights are those of before.
    if config.pad_token_id is not None:
        embeddings = model.get_input_embeddings().weight
        with torch.no_grad():
            embeddings[config.pad_token_id].normal_(0.0, config.initializer_range,
                                                    generator=torch.Generator().manual_seed(seed))
    return model


def write_tiny_model(folder: str | Path, seed: int = 0, **overrides: Any) -> Path:
    """Write a randomly initialised tiny model, its generation config and the char tokenizer to `folder`.

    generation_config.json carries only the token ids (bos/eos/pad): sampling settings come from the run
    config, never from the folder (vLLM would otherwise take them as defaults).
    """
    from transformers import GenerationConfig

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = build_tiny_model(seed=seed, **overrides)
    model.generation_config = GenerationConfig(bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID)
    model.save_pretrained(folder, safe_serialization=True)
    save_char_tokenizer(folder, model_max_length=model.config.max_position_embeddings)
    return folder
