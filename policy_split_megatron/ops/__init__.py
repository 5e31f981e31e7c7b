"""Fused numerical ops for Megatron tensor-parallel tensors."""

from policy_split_megatron.ops.vocab_parallel import logprobs_and_entropy

__all__ = ["logprobs_and_entropy"]
