"""The rollouts of one RL step, with DAPO's dynamic sampling when it is on (arXiv 2503.14476, §3.2).

Without it, a step is one batch of prompts from the sampler, generated and scored. With
`algorithm.dapo.dynamic_sampling`, groups whose task rewards are all equal (every response right, or
every response wrong: zero advantage, and for Policy Split zero HE bonus under the clamp) are
dropped, and further batches are generated until `data.prompts_per_step` groups are kept or
`algorithm.dapo.max_generation_rounds` rounds have run (the first included). A Policy Split group is
a prompt with the responses of BOTH modes (`dapo.dynamic_sampling_keep`). Samples are identical on
every rank after generation, so every rank keeps the same groups and no rank waits for another. The
kept groups are renumbered 0..n-1 in the order they were generated; surplus groups of the last round
are dropped. Round r > 0 draws its request seeds from step key `step * max_rounds + r`, so extra rounds
never repeat round 0's samples.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from policy_split_megatron.algorithms import dapo
from policy_split_megatron.trainer.session import Session, generate_scored


def step_rollouts(session: Session, *, step: int) -> tuple[list[dict], list, list, dict[str, float]]:
    """(records, prompts, samples, metrics) of this step, identical on every rank."""
    ds = session.config.algorithm.dapo
    records = session.sampler.next_batch()
    prompts, samples, metrics = generate_scored(session, records, step=step)
    if not ds.dynamic_sampling:
        return records, prompts, samples, metrics
    wanted = session.config.data.prompts_per_step
    kept: list[tuple[dict, Any, list]] = []
    rounds = dropped = 0
    while True:
        rounds += 1
        by_prompt: dict[int, list] = {}
        for sample in samples:
            by_prompt.setdefault(sample.prompt_index, []).append(sample)
        rewards = torch.tensor([float(s.reward) for s in samples])
        groups = torch.tensor([s.prompt_index for s in samples])
        _, kept_ids = dapo.dynamic_sampling_keep(rewards, groups, tolerance=ds.dynamic_sampling_tolerance)
        keep = set(kept_ids.tolist())
        for prompt in prompts:
            if prompt.index in keep and len(kept) < wanted:
                kept.append((records[prompt.index], prompt, by_prompt[prompt.index]))
        dropped += len(by_prompt) - len(keep)
        if len(kept) >= wanted or rounds >= ds.max_generation_rounds:
            break
        records = session.sampler.next_batch()
        prompts, samples, _ = generate_scored(session, records, step=step * ds.max_generation_rounds + rounds)
    out_records, out_prompts, out_samples = [], [], []
    for new_index, (record, prompt, group) in enumerate(kept):
        out_records.append(record)
        out_prompts.append(dataclasses.replace(prompt, index=new_index))
        out_samples.extend(dataclasses.replace(s, prompt_index=new_index) for s in group)
    metrics.update({"dapo/generation_rounds": float(rounds), "dapo/kept_groups": float(len(kept)),
                    "dapo/dropped_groups": float(dropped)})
    return out_records, out_prompts, out_samples, metrics
