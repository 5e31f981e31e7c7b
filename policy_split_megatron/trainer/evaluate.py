"""Held-out evaluation of both modes with the paper's decoding defaults (Table 9: temperature 0.6,
top-p 0.95, top-k 20; accuracy averaged over k samples).

Per mode: accuracy (mean over all samples), best-of-k, distinct correct answers per prompt,
distinct-n / Div-BLEU, response length, and the mean full-vocabulary token entropy in bits of
the distribution the samples were drawn from (the policy's next-token distribution at the
evaluation temperature, computed by the Megatron policy on its own samples).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

import torch

from policy_split_megatron.algorithms.modes import HIGH_ENTROPY, MODE_NAMES, NORMAL
from policy_split_megatron.config import EvaluationConfig
from policy_split_megatron.metrics.diversity import entropy_bits
from policy_split_megatron.engine import score_rows
from policy_split_megatron.trainer.session import Session, generate_scored


@contextlib.contextmanager
def evaluation_sampling(session: Session, cfg: EvaluationConfig) -> Iterator[None]:
    """The engine samples k per mode with the evaluation decoding for the duration of the block."""
    engine = session.engine
    training = engine.config
    decode = {"temperature": cfg.temperature, "top_p": cfg.top_p, "top_k": cfg.top_k}
    engine.config = dataclasses.replace(
        training,
        n_normal=cfg.samples_per_prompt,
        n_explore=cfg.samples_per_prompt,
        normal=dataclasses.replace(training.normal, **decode),
        explore=dataclasses.replace(training.explore, **decode),
    )
    try:
        yield
    finally:
        engine.config = training


def evaluate(session: Session, records: list[dict[str, Any]], cfg: EvaluationConfig) -> dict[str, float]:
    """Evaluate both modes on `records` (the same result on every rank)."""
    with evaluation_sampling(session, cfg):
        prompts, samples, metrics = generate_scored(session, records, step=10**6)
    result = {k: v for k, v in metrics.items() if not k.startswith("rollout/")}
    for mode in (NORMAL, HIGH_ENTROPY):
        mine = [s for s in samples if s.mode == mode]
        if not mine:
            continue
        rows = [list(prompts[s.prompt_index].ids(mode)) + list(s.response_ids) for s in mine]
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), session.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.bool)
        for r, (row, s) in enumerate(zip(rows, mine)):
            ids[r, : len(row)] = torch.tensor(row)
            mask[r, len(row) - len(s.response_ids) : len(row)] = True
        lengths = torch.tensor([len(r) for r in rows])
        _, entropy = score_rows(session.policy, ids, lengths, token_budget=session.config.train.micro_batch_tokens,
                                temperature=cfg.temperature)
        entropy, mask = entropy.cpu(), mask
        name = MODE_NAMES[mode]
        result[f"{name}/entropy_bits"] = entropy_bits(float((entropy * mask).sum() / mask.sum()))
        result[f"{name}/response_length"] = float(sum(len(s.response_ids) for s in mine) / len(mine))
    return result


def format_table(result: dict[str, float]) -> str:
    """Both modes side by side, one metric per line."""
    names = [MODE_NAMES[NORMAL], MODE_NAMES[HIGH_ENTROPY]]
    metrics = sorted({k.split("/", 1)[1] for k in result if k.split("/", 1)[0] in names})
    lines = [f"{'metric':<22}{names[0]:>14}{names[1]:>14}"]
    for metric in metrics:
        cells = [result.get(f"{n}/{metric}") for n in names]
        lines.append(f"{metric:<22}" + "".join(f"{c:>14.4f}" if c is not None else f"{'-':>14}" for c in cells))
    return "\n".join(lines)

