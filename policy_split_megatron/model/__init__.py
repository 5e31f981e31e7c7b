"""Building the Megatron policy: HF config -> TransformerConfig, layer specs, parallel stages."""

from policy_split_megatron.model.architecture import ModelArchitecture, architecture_from_hf
from policy_split_megatron.model.builder import build_policy_model, forward_logits

__all__ = ["ModelArchitecture", "architecture_from_hf", "build_policy_model", "forward_logits"]
