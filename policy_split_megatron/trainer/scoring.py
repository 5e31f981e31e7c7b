"""A step's samples scored once over all ranks, and their diversity measured once.

Every rank holds the same gathered samples (rollout.all_gather_samples). Instead of every rank
scoring all of them, each rank scores a contiguous share in its reward pool (rewards/pool.py), and
the scores are all-gathered. The same for the text-diversity metrics: each (mode, prompt) group of
a bounded, seeded subsample is measured by one rank, the rows are all-gathered, and every rank
averages the same rows, so every rank returns the same metrics.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch.distributed as dist

from policy_split_megatron.metrics.diversity import diversity_by_mode, group_metrics, mean_by_mode
from policy_split_megatron.rewards.base import RewardFunction
from policy_split_megatron.rewards.pool import RewardPool, Score, failure_counts
from policy_split_megatron.rollout.layout import shard_bounds
from policy_split_megatron.rollout.types import Sample

_POOLS: dict[tuple, RewardPool] = {}
_REPORTED: set[str] = set()


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def _gather(part: list) -> list:
    """Every rank's list, concatenated in rank order (identical on every rank)."""
    world, _ = _world()
    if world == 1:
        return list(part)
    parts: list = [None] * world
    dist.all_gather_object(parts, part)
    return [item for p in parts for item in p]


def reward_pool(reward_fn: RewardFunction, *, workers: int, timeout: float) -> RewardPool:
    """This process's pool for `reward_fn` (started on first use, reused by every later step)."""
    key = (reward_fn.spec, tuple(sorted(reward_fn.options.items())), workers, timeout)
    if key not in _POOLS:
        _POOLS[key] = RewardPool(reward_fn, workers=workers, timeout=timeout)
    return _POOLS[key]


def _report_failures(scores: Sequence[Score], timeout: float) -> None:
    """The first failure of each kind, once per run, on rank 0 (the counts go to the metrics)."""
    if _world()[1] != 0:
        return
    for score in scores:
        if score.failure and score.failure not in _REPORTED:
            _REPORTED.add(score.failure)
            detail = (f"ran past data.reward_timeout={timeout:g} s" if score.failure == "timeout" else
                      "died" if score.failure == "crash" else f"raised {score.info.get('error', score.failure)}")
            print(f"policy-split: warning: scoring a response {detail}; it scores 0 (counted in reward/"
                  f"{'timeouts' if score.failure == 'timeout' else 'crashes' if score.failure == 'crash' else 'errors'}"
                  "; reported once)", file=sys.stderr)


def score_samples(samples: Sequence[Sample], records: Sequence[dict], reward_fn: RewardFunction,
                  decode: Callable[[Sample], str], *, workers: int, timeout: float) -> tuple[list[Score], dict]:
    """One Score per sample (the same list on every rank): this rank scores its share, then the
    shares are gathered. Metrics: failure counts and the slowest rank's scoring time."""
    world, rank = _world()
    lo, hi = shard_bounds(len(samples), world, rank)
    start = time.perf_counter()
    pool = reward_pool(reward_fn, workers=workers, timeout=timeout)
    mine = pool.score([(records[s.prompt_index], decode(s)) for s in samples[lo:hi]])
    seconds = _gather([time.perf_counter() - start])
    scores = _gather(mine)
    _report_failures(scores, timeout)
    return scores, {**failure_counts(scores), "reward/seconds": max(seconds)}


def answer_key(score: Score, sample: Sample) -> Any:
    """What makes two correct answers the same: the verifier's canonical form (Countdown), else the
    extracted answer (math, multiple choice), else the whole response."""
    for key in ("canonical", "extracted"):
        if score.info.get(key) is not None:
            return score.info[key]
    return tuple(sample.response_ids)


def diversity_metrics(samples: Sequence[Sample], scores: Sequence[Score],
                      units: Callable[[Sample], Sequence], *, max_prompts: int, seed: int) -> dict[str, float]:
    """Per mode: correctness over every prompt (accuracy, best_of_n, distinct_correct, and
    high_entropy/new_correct, both/distinct_correct), and distinct-n, Div-N-Gram and Div-BLEU of
    `units(sample)` over at most `max_prompts` prompts per mode (0: all), chosen with `seed`."""
    rows = [{"prompt_id": s.prompt_index, "mode": s.mode, "text": (), "reward": sc.reward,
             "answer": answer_key(sc, s)} for s, sc in zip(samples, scores)]
    out = diversity_by_mode(rows, answer_key="answer", text_metrics=False)

    groups: dict[tuple[int, int], list[Sample]] = {}
    for sample in samples:
        groups.setdefault((sample.mode, sample.prompt_index), []).append(sample)
    chosen = []
    for mode in sorted({m for m, _ in groups}):
        prompts = sorted(p for m, p in groups if m == mode)
        if max_prompts and len(prompts) > max_prompts:
            prompts = sorted(random.Random(f"{seed}/{mode}").sample(prompts, max_prompts))
        chosen.extend((mode, p) for p in prompts)
    world, rank = _world()
    lo, hi = shard_bounds(len(chosen), world, rank)
    mine = [{"mode": mode, **group_metrics([units(s) for s in groups[(mode, p)]])} for mode, p in chosen[lo:hi]]
    measured = _gather(mine)
    text = mean_by_mode(measured, mode_key="mode")
    out.update({k: v for k, v in text.items() if not k.endswith("/count")})
    return out
