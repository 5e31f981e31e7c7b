"""The HF <-> Megatron name table and weight conversion (used by checkpoint tools and weight sync)."""

from policy_split_megatron.bridge.convert import (
    SafetensorsSource,
    WeightMismatchError,
    export_hf_weights,
    export_plan,
    load_hf_weights,
)
from policy_split_megatron.bridge.families import hf_names, mappings_for

__all__ = [
    "SafetensorsSource",
    "WeightMismatchError",
    "export_hf_weights",
    "export_plan",
    "hf_names",
    "load_hf_weights",
    "mappings_for",
]
