"""RL algorithms as pure tensor math: advantages (GRPO, RLOO), policy losses (PPO-clip, GSPO), Policy Split,
entropy baselines, Clip-Cov/KL-Cov, ERPD, DAPO's sampling/shaping pieces, the rollout/trainer mismatch
correction and loss aggregation. No process groups here (no collective is ever called): global
statistics are computed by the caller and passed in. Equations and choices: docs/algorithms.md.

The trainer's single entry point is the dispatcher in `registry` (re-exported below).
"""

from policy_split_megatron.algorithms.aggregation import LOSS_AGG_MODES, aggregate_loss, local_loss_denominator
from policy_split_megatron.algorithms.config import (
    ALGORITHM_NAMES,
    AdvantageConfig,
    AlgorithmConfig,
    ClipCovConfig,
    DAPOConfig,
    EntropyAdvConfig,
    EntropyDrivenAdvConfig,
    EntropyRegConfig,
    ERPDConfig,
    ForkingTokensConfig,
    KLCovConfig,
    PolicySplitConfig,
    PPOConfig,
    RolloutCorrectionConfig,
    ScheduleConfig,
    config_from_dict,
)
from policy_split_megatron.algorithms.modes import (
    DEFAULT_HE_SYSTEM_PROMPT,
    HIGH_ENTROPY,
    NORMAL,
    mode_messages,
    render_mode_prompts,
    render_prompt_ids,
)
from policy_split_megatron.algorithms.policy_split import QuarterBatch, RolloutSample, build_quarters
from policy_split_megatron.algorithms.registry import (
    AdvantageResult,
    MicroBatch,
    Requirements,
    RolloutBatch,
    compute_advantages,
    compute_loss,
    loss_denominator,
    requirements,
)

__all__ = [
    "ALGORITHM_NAMES", "LOSS_AGG_MODES", "DEFAULT_HE_SYSTEM_PROMPT", "NORMAL", "HIGH_ENTROPY",
    "AdvantageConfig", "AlgorithmConfig", "ClipCovConfig", "DAPOConfig", "EntropyAdvConfig",
    "EntropyDrivenAdvConfig", "EntropyRegConfig", "ERPDConfig", "ForkingTokensConfig", "KLCovConfig",
    "PolicySplitConfig", "PPOConfig", "RolloutCorrectionConfig", "ScheduleConfig", "config_from_dict",
    "mode_messages", "render_prompt_ids", "render_mode_prompts",
    "QuarterBatch", "RolloutSample", "build_quarters",
    "AdvantageResult", "MicroBatch", "Requirements", "RolloutBatch",
    "compute_advantages", "compute_loss", "loss_denominator", "requirements",
    "aggregate_loss", "local_loss_denominator",
]
