"""Samples -> right-padded tensors, aligned the way `algorithms/` expects.

Position t of a row holds input_ids[t]; `response_mask[t]` is True on response tokens and
`engine_log_probs[t]` is the engine's log-prob of input_ids[t] given input_ids[:t] (0 elsewhere).
A trainer op that returns, at position t, the log-prob of input_ids[t] is aligned with both as is
(one returning the prediction of t+1 at t needs them shifted left by one), as in
`algorithms.policy_split.QuarterBatch`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from policy_split_megatron.rollout.types import Sample


@dataclass
class RolloutTensors:
    input_ids: torch.Tensor  # [B, L] long, prompt + response, right-padded with pad_token_id
    attention_mask: torch.Tensor  # [B, L] bool: prompt + response
    response_mask: torch.Tensor  # [B, L] bool: response tokens
    engine_log_probs: torch.Tensor  # [B, L] float32: engine log-prob at response positions, 0 elsewhere
    mode: torch.Tensor  # [B] long: the mode that generated the row
    prompt_index: torch.Tensor  # [B] long: global prompt index
    sample_index: torch.Tensor  # [B] long: index among the samples of (prompt, mode)
    prompt_lengths: torch.Tensor  # [B] long
    response_lengths: torch.Tensor  # [B] long
    truncated: torch.Tensor  # [B] bool: finish_reason == "length" (no EOS)


def samples_to_tensors(samples: Sequence[Sample], pad_token_id: int) -> RolloutTensors:
    """Stack samples (in the given order) into padded tensors."""
    for i, s in enumerate(samples):
        if len(s.logprobs) != len(s.response_ids):
            raise ValueError(f"sample {i}: {len(s.logprobs)} log-probs for {len(s.response_ids)} response tokens")
        if not s.response_ids:
            raise ValueError(f"sample {i} (prompt {s.prompt_index}) has an empty response")
    rows = len(samples)
    length = max((len(s.prompt_ids) + len(s.response_ids) for s in samples), default=0)
    input_ids = torch.full((rows, length), int(pad_token_id), dtype=torch.long)
    attention_mask = torch.zeros((rows, length), dtype=torch.bool)
    response_mask = torch.zeros_like(attention_mask)
    log_probs = torch.zeros((rows, length), dtype=torch.float32)
    for i, s in enumerate(samples):
        p, r = len(s.prompt_ids), len(s.response_ids)
        input_ids[i, : p + r] = torch.tensor([*s.prompt_ids, *s.response_ids], dtype=torch.long)
        attention_mask[i, : p + r] = True
        response_mask[i, p : p + r] = True
        log_probs[i, p : p + r] = torch.tensor(s.logprobs, dtype=torch.float32)

    def column(values) -> torch.Tensor:
        return torch.tensor(list(values), dtype=torch.long)

    return RolloutTensors(
        input_ids=input_ids,
        attention_mask=attention_mask,
        response_mask=response_mask,
        engine_log_probs=log_probs,
        mode=column(s.mode for s in samples),
        prompt_index=column(s.prompt_index for s in samples),
        sample_index=column(s.sample_index for s in samples),
        prompt_lengths=column(len(s.prompt_ids) for s in samples),
        response_lengths=column(len(s.response_ids) for s in samples),
        truncated=torch.tensor([s.finish_reason == "length" for s in samples], dtype=torch.bool),
    )
