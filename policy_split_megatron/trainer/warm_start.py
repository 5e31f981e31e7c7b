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

import functools
import random
from typing import Any, Callable, Sequence

import torch
from tqdm import tqdm

from policy_split_megatron.algorithms.modes import HIGH_ENTROPY, NORMAL
from policy_split_megatron.engine import Pack, PolicyEngine, pack_batch
from policy_split_megatron.engine.collectives import sum_reports
from policy_split_megatron.rollout import DualModePrompt


def reference_solutions(record: dict[str, Any]) -> list[str]:
    meta = record.get("metadata") or {}
    solutions = meta.get("solutions") or ([meta["reference"]] if meta.get("reference") else [])
    if not solutions:
        raise ValueError(
            f"warm start needs reference solutions: record {record.get('index')} from {record.get('source')} "
            "has neither metadata.solutions nor metadata.reference (set warm_start.steps=0 to skip)"
        )
    return list(solutions)


def _sft_loss(pack: Pack, log_probs: torch.Tensor, entropy: torch.Tensor, *, mask: torch.Tensor):
    """Token-mean cross-entropy on response tokens: numerator and count (engine/schedule.py)."""
    m = pack.gather_rows(mask)
    nll = -(log_probs * m).sum()
    count = m.sum()
    return nll, count, {"nll": nll.detach(), "tokens": count.to(torch.float64)}


def warm_start(
    engine: PolicyEngine,
    records: Sequence[dict[str, Any]],
    prompts: Sequence[DualModePrompt],
    encode_response: Callable[[str], list[int]],
    *,
    steps: int,
    batch_size: int,
    pad_token_id: int,
    seed: int,
    token_budget: int,
    show_progress: bool = True,
) -> list[float]:
    """Run `steps` supervised optimizer steps of `engine` (its optimizer and LR schedule, built by
    the caller) on token-mean cross-entropy over response tokens; return each step's loss over the
    whole batch. `prompts[i]` is `records[i]` rendered in both modes. Each data-parallel rank draws
    `batch_size` examples with its own `seed`; the loss is normalised by the token count of all ranks'
    examples (megatron-core's per-token loss)."""
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
        lengths = torch.tensor([len(r) for r in rows])
        packs = [p.to(engine.device) for p in pack_batch(ids, lengths, token_budget, engine.alignment)]
        _, reports = engine.train_step(packs, functools.partial(_sft_loss, mask=mask.to(engine.device)),
                                       step_index=step, temperature=1.0)  # the data's own distribution
        totals = sum_reports(reports, ["nll", "tokens"])
        losses.append(totals["nll"] / max(totals["tokens"], 1.0))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    return losses
