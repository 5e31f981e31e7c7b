"""Supervised warm start: teach the policy the answer format before RL.

The embedded default starts from a random tiny model; a short supervised phase on reference
solutions gives it partial accuracy so that RL has both successes and failures to learn from.
Each example pairs a prompt with one reference solution drawn at random from the record's
`metadata.solutions` (or `metadata.reference`), so the model learns a distribution over correct
answers rather than one per prompt. Half of the examples use the high-entropy conditioning with
the same targets: before RL the two modes should behave alike (the paper's starting point: the
HE prompt alone barely shifts the output distribution), and RL is what splits them.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Sequence

import torch
from tqdm import tqdm

from policy_split_megatron.algorithms.modes import HIGH_ENTROPY, NORMAL
from policy_split_megatron.model import ModelArchitecture
from policy_split_megatron.rollout import DualModePrompt
from policy_split_megatron.trainer.forward import token_logprobs
from policy_split_megatron.trainer.optimizer import PolicyOptimizer


def reference_solutions(record: dict[str, Any]) -> list[str]:
    meta = record.get("metadata") or {}
    solutions = meta.get("solutions") or ([meta["reference"]] if meta.get("reference") else [])
    if not solutions:
        raise ValueError(
            f"warm start needs reference solutions: record {record.get('index')} from {record.get('source')} "
            "has neither metadata.solutions nor metadata.reference (set warm_start.steps=0 to skip)"
        )
    return list(solutions)


def warm_start(
    model: torch.nn.Module,
    arch: ModelArchitecture,
    optimizer: PolicyOptimizer,
    records: Sequence[dict[str, Any]],
    prompts: Sequence[DualModePrompt],
    encode_response: Callable[[str], list[int]],
    *,
    steps: int,
    batch_size: int,
    pad_token_id: int,
    seed: int,
    data_parallel_size: int = 1,
    lr_at: Callable[[int], float] | None = None,
    show_progress: bool = True,
) -> list[float]:
    """Run `steps` supervised steps (token-mean cross-entropy on response tokens); return the
    loss of each step. `prompts[i]` is `records[i]` rendered in both modes. Each data-parallel rank
    passes its own `seed`; gradients are summed over ranks, so each rank's loss is divided by
    `data_parallel_size`. `lr_at(step)` sets the learning rate of each step (a schedule); None keeps
    the optimizer's."""
    rng = random.Random(seed)
    losses = []
    bar = tqdm(range(steps), desc="warm start", unit="step", disable=not show_progress)
    for step in bar:
        rows, masks = [], []
        for _ in range(batch_size):
            i = rng.randrange(len(records))
            prompt = prompts[i].ids(HIGH_ENTROPY if rng.random() < 0.5 else NORMAL)
            response = encode_response(rng.choice(reference_solutions(records[i])))
            rows.append(list(prompt) + response)
            masks.append([False] * len(prompt) + [True] * len(response))
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.bool)
        for r, (row, m) in enumerate(zip(rows, masks)):
            ids[r, : len(row)] = torch.tensor(row)
            mask[r, : len(m)] = torch.tensor(m)
        logp, _ = token_logprobs(model, arch, ids)
        loss = -(logp * mask).sum() / mask.sum()
        (loss / data_parallel_size).backward()
        if lr_at is not None:
            for group in optimizer.optimizer.param_groups:
                group["lr"] = lr_at(step)
        optimizer.step(step_index=step)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    return losses
