"""Tiny random Hugging Face models of each supported family, for tests and the model check.

Every parameter is randomised (norm weights around 1, biases non-zero), so a mis-mapped norm or
bias changes the logits instead of hiding behind HF's all-ones/zeros initialisation. head_dim is
at least 32: vLLM's CPU attention rejects 16.
"""

from __future__ import annotations

from pathlib import Path

import torch

FAMILIES = ("llama", "qwen2", "qwen3")


def tiny_hf_config(family: str, **overrides):
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    classes = {"llama": LlamaConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config}
    if family not in classes:
        raise ValueError(f"unknown family '{family}'; choose from {', '.join(FAMILIES)}")
    kwargs = dict(
        vocab_size=211,  # deliberately not a multiple of any TP size or padding unit
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=256,
        rms_norm_eps=1e-6,
        rope_theta=50000.0,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    if family == "llama":
        kwargs["attention_bias"] = False
    kwargs.update(overrides)
    return classes[family](**kwargs)


def random_hf_model(config, seed: int = 0, scale: float = 0.08):
    """A HF causal LM with every parameter drawn at random (float32)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                param.copy_(1.0 + 0.1 * torch.randn_like(param))
            else:
                param.copy_(scale * torch.randn_like(param))
    return model.eval()


def save_random_hf_model(family: str, folder: str | Path, seed: int = 0, **overrides) -> Path:
    """Write a random tiny model of `family` to `folder` as safetensors + config.json."""
    folder = Path(folder)
    model = random_hf_model(tiny_hf_config(family, **overrides), seed=seed)
    model.save_pretrained(folder, safe_serialization=True)
    return folder
