"""Held-out evaluation of both modes with the paper's decoding defaults (Table 9: temperature 0.6,
top-p 0.95, top-k 20; n samples per prompt and mode, accuracy averaged over them).

Per mode (keys "normal/<metric>", "high_entropy/<metric>"):
  avg@n, pass@1 .. pass@n (unbiased), maj@n      metrics/correctness.py (maj@n: verifiers with an
                                                 answer extractor, rewards/base.py)
  accuracy (= avg@n), best_of_n, distinct_correct, distinct-n, Div-BLEU, ...   metrics/diversity.py
  entropy_bits      mean full-vocabulary token entropy, in bits, over all response tokens, of the
                    distribution the samples were drawn from (the policy's next-token distribution
                    at the evaluation temperature, computed by the Megatron policy on its samples)
  response_length   mean response tokens
plus "prompts" (evaluated) and "skipped_prompts" (rollout.on_bad_prompt="skip").

Prompts are generated `evaluation.batch_prompts` at a time; batch b's requests are seeded with step
EVAL_STEP + b (rollout/requests.py), far from any training step's seeds.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any, Sequence

import torch

from policy_split_megatron.algorithms.modes import HIGH_ENTROPY, MODE_NAMES, NORMAL
from policy_split_megatron.config import EvaluationConfig
from policy_split_megatron.metrics.correctness import benchmark_correctness
from policy_split_megatron.metrics.diversity import entropy_bits
from policy_split_megatron.engine import score_rows
from policy_split_megatron.trainer.session import Session, generate_scored

EVAL_STEP = 10**6


@contextlib.contextmanager
def evaluation_sampling(session: Session, cfg: EvaluationConfig) -> Iterator[None]:
    """The engine samples n per mode with the evaluation decoding for the duration of the block."""
    engine = session.engine
    training = engine.config
    decode: dict[str, Any] = {"temperature": cfg.temperature, "top_p": cfg.top_p, "top_k": cfg.top_k}
    if cfg.max_tokens:
        decode["max_tokens"] = cfg.max_tokens
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


@contextlib.contextmanager
def scoring_with(session: Session, reward_fn: Any) -> Iterator[None]:
    """`generate_scored` scores with `reward_fn` (a benchmark's own verifier) for the block."""
    saved = session.reward_fn
    session.reward_fn = reward_fn
    try:
        yield
    finally:
        session.reward_fn = saved


def response_entropy(session: Session, prompts: Sequence[Any], samples: Sequence[Any],
                     temperature: float) -> list[tuple[float, int]]:
    """Per sample: (sum over its response tokens of the full-vocabulary entropy in nats, token count)."""
    if not samples:
        return []
    by_index = {p.index: p for p in prompts}
    rows = [list(by_index[s.prompt_index].ids(s.mode)) + list(s.response_ids) for s in samples]
    ids = torch.full((len(rows), max(map(len, rows))), session.pad_token_id, dtype=torch.long)
    mask = torch.zeros(ids.shape, dtype=torch.bool)
    for r, (row, s) in enumerate(zip(rows, samples)):
        ids[r, : len(row)] = torch.tensor(row)
        mask[r, len(row) - len(s.response_ids) : len(row)] = True
    _, entropy = score_rows(session.policy, ids, torch.tensor([len(r) for r in rows]),
                            token_budget=session.config.train.micro_batch_tokens, temperature=temperature)
    sums = (entropy.cpu() * mask).sum(dim=1)
    return [(float(sums[r]), len(s.response_ids)) for r, s in enumerate(samples)]


def _combine_batches(batches: list[dict[str, float]]) -> dict[str, float]:
    """Per-prompt means of several batches (diversity_by_mode's), weighted by each batch's prompts
    per mode ("<mode>/count", summed)."""
    totals: dict[str, float] = {}
    weights: dict[str, float] = {}
    for metrics in batches:
        for key, value in metrics.items():
            group, _, name = key.partition("/")
            if group == "rollout":
                continue
            if name == "count":
                totals[key] = totals.get(key, 0.0) + value
                continue
            weight = metrics.get(f"{MODE_NAMES[HIGH_ENTROPY] if group == 'both' else group}/count", 1.0)
            totals[key] = totals.get(key, 0.0) + value * weight
            weights[key] = weights.get(key, 0.0) + weight
    return {k: v / weights[k] if k in weights else v for k, v in totals.items() if weights.get(k, 1.0) > 0}


def evaluate(session: Session, records: list[dict[str, Any]], cfg: EvaluationConfig, *, reward: Any = None,
             sample_rows: list[dict] | None = None) -> dict[str, float]:
    """Evaluate both modes on `records` (the same result on every rank), scored by `reward` (default:
    the session's verifier). `sample_rows`: when given, one dict per sample is appended to it."""
    reward = reward or session.reward_fn
    keyed = getattr(reward, "has_answer_key", False)
    samples_out: list[dict] = []
    batches: list[dict[str, float]] = []
    skipped = 0
    with evaluation_sampling(session, cfg), scoring_with(session, reward):
        for batch, start in enumerate(range(0, len(records), cfg.batch_prompts)):
            chunk = records[start : start + cfg.batch_prompts]
            prompts, samples, metrics = generate_scored(session, chunk, step=EVAL_STEP + batch)
            batches.append(metrics)
            skipped += int(sum(v for k, v in metrics.items() if k.startswith("rollout/skipped_")))
            for s, (nats, tokens) in zip(samples, response_entropy(session, prompts, samples, cfg.temperature)):
                row = {"prompt": start + s.prompt_index, "mode": MODE_NAMES[s.mode], "sample": s.sample_index,
                       "reward": s.reward, "answer_key": None, "entropy_nats": nats, "tokens": tokens,
                       "finish_reason": s.finish_reason}
                if keyed or sample_rows is not None:
                    text = session.tokenizer.decode(s.response_ids, skip_special_tokens=True)
                    row["answer_key"] = reward.answer_key(chunk[s.prompt_index], text) if keyed else None
                    if sample_rows is not None:  # kept only when asked: texts of a whole benchmark are large
                        row.update(text=text, response_ids=list(s.response_ids))
                samples_out.append(row)
    result = _combine_batches(batches)
    for mode in (NORMAL, HIGH_ENTROPY):
        name = MODE_NAMES[mode]
        mine = [row for row in samples_out if row["mode"] == name]
        if not mine:
            continue
        groups: dict[int, list[dict]] = {}
        for row in mine:
            groups.setdefault(row["prompt"], []).append(row)
        correctness = benchmark_correctness([([r["reward"] for r in g], [r["answer_key"] for r in g] if keyed else None)
                                             for g in groups.values()])
        result.update({f"{name}/{k}": v for k, v in correctness.items()})
        tokens = sum(r["tokens"] for r in mine)
        result[f"{name}/entropy_bits"] = entropy_bits(sum(r["entropy_nats"] for r in mine) / max(tokens, 1))
        result[f"{name}/response_length"] = tokens / len(mine)
    result["prompts"] = float(len({row["prompt"] for row in samples_out}))
    result["skipped_prompts"] = float(skipped)
    if sample_rows is not None:
        sample_rows.extend(samples_out)
    return result


def metric_order(metric: str) -> tuple:
    """Table order: avg@n, pass@k by k, maj@n, then the rest by name."""
    head, _, number = metric.partition("@")
    rank = {"avg": 0, "pass": 1, "maj": 2}.get(head)
    if rank is not None and number.isdigit():
        return (rank, int(number), metric)
    return (3, 0, metric)


def format_table(result: dict[str, float]) -> str:
    """Both modes side by side, one metric per line."""
    names = [MODE_NAMES[NORMAL], MODE_NAMES[HIGH_ENTROPY]]
    metrics = sorted({k.split("/", 1)[1] for k in result if k.split("/", 1)[0] in names}, key=metric_order)
    lines = [f"{'metric':<22}{names[0]:>14}{names[1]:>14}"]
    for metric in metrics:
        cells = [result.get(f"{n}/{metric}") for n in names]
        lines.append(f"{metric:<22}" + "".join(f"{c:>14.4f}" if c is not None else f"{'-':>14}" for c in cells))
    return "\n".join(lines)
