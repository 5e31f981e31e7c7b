"""Rollout: the colocated vLLM engine, weight sync from Megatron, dual-mode prompts and samples.

Only this package imports vLLM, and only lazily (in `VLLMRolloutEngine.start` and request
building), so the config and data types import without it.
"""

from policy_split_megatron.rollout.base import EngineStateError, RolloutEngine
from policy_split_megatron.rollout.config import (
    RolloutConfig,
    SamplingConfig,
    rollout_config_from_dict,
)
from policy_split_megatron.rollout.layout import ReplicaLayout, all_gather_samples, shard_prompts
from policy_split_megatron.rollout.prompts import (
    BadPromptError,
    build_dual_mode_prompts,
    resolve_eos_token_ids,
    resolve_pad_token_id,
    skip_metrics,
)
from policy_split_megatron.rollout.tensors import RolloutTensors, samples_to_tensors
from policy_split_megatron.rollout.types import (
    DualModePrompt,
    GenerationMetrics,
    RolloutResult,
    Sample,
    SkippedPrompt,
    SyncMetrics,
)
from policy_split_megatron.rollout.vllm_engine import VLLMRolloutEngine
from policy_split_megatron.rollout.weight_sync import WeightSync, iter_buckets

__all__ = [
    "BadPromptError",
    "DualModePrompt",
    "EngineStateError",
    "GenerationMetrics",
    "ReplicaLayout",
    "RolloutConfig",
    "RolloutEngine",
    "RolloutResult",
    "RolloutTensors",
    "Sample",
    "SamplingConfig",
    "SkippedPrompt",
    "SyncMetrics",
    "VLLMRolloutEngine",
    "WeightSync",
    "all_gather_samples",
    "build_dual_mode_prompts",
    "iter_buckets",
    "resolve_eos_token_ids",
    "resolve_pad_token_id",
    "rollout_config_from_dict",
    "samples_to_tensors",
    "shard_prompts",
]
