"""The RL loop and what it composes: optimizer, checkpoints, metrics."""
