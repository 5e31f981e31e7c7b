"""Reward functions (verifiers): the interface, loading by dotted path, and the shipped verifiers
(math answers with math-verify, multiple-choice letters, the embedded Countdown task). docs/tasks.md."""

from policy_split_megatron.rewards.base import (
    REWARD_ALIASES,
    RewardFunction,
    RewardLoadError,
    RewardOutput,
    as_reward_output,
    load_reward_fn,
    resolve_callable,
)
from policy_split_megatron.rewards.countdown import countdown_reward
from policy_split_megatron.rewards.math_answer import math_reward
from policy_split_megatron.rewards.multiple_choice import extract_choice, multiple_choice_reward

__all__ = [
    "REWARD_ALIASES", "RewardFunction", "RewardLoadError", "RewardOutput", "as_reward_output",
    "load_reward_fn", "resolve_callable", "countdown_reward", "math_reward", "multiple_choice_reward",
    "extract_choice",
]
