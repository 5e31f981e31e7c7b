"""policy-split-megatron: Megatron-based RL post-training with Policy Split dual-mode exploration."""

__version__ = "0.1.0"
