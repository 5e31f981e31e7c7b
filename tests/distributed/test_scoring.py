"""A step's samples scored once over the ranks (trainer/scoring.py), on 2 real gloo ranks: every
sample is scored by exactly one rank's pool, both ranks get the same scores, and the diversity
metrics equal the single-process reference computed on the decoded texts, characters as tokens
(what the trainer logged before), or on a seeded subsample of the prompts when bounded."""

from __future__ import annotations

import itertools
import os
import random

import pytest

from policy_split_megatron.metrics.diversity import diversity_by_mode, group_metrics
from policy_split_megatron.rollout.types import Sample
from tests.helpers.distributed import run_distributed

PROMPTS, K = 5, 4


def _samples() -> list[Sample]:
    rng = random.Random(0)
    samples = []
    for prompt, mode, k in itertools.product(range(PROMPTS), (0, 1), range(K)):
        text = rng.choice(["ok", "no"]) + " " + "".join(rng.choice("abcd+-") for _ in range(rng.randint(3, 12)))
        samples.append(Sample(prompt, mode, k, (1, 2), tuple(ord(c) for c in text), (0.0,) * len(text), "stop"))
    return samples


def _decode(sample: Sample) -> str:
    return "".join(chr(i) for i in sample.response_ids)


def _score_and_measure(rank, world_size, samples):
    from policy_split_megatron.rewards import load_reward_fn
    from policy_split_megatron.trainer.scoring import diversity_metrics, score_samples

    reward_fn = load_reward_fn("tests.helpers.rewards:prefix_reward")
    records = [{"prompt": str(p), "answer": ""} for p in range(PROMPTS)]
    scores, reward_metrics = score_samples(samples, records, reward_fn, _decode, workers=1, timeout=60)
    units = lambda s: list(s.response_ids)  # noqa: E731
    full = diversity_metrics(samples, scores, units, max_prompts=0, seed=0)
    bounded = diversity_metrics(samples, scores, units, max_prompts=2, seed=7)
    return scores, reward_metrics, full, bounded


@pytest.fixture(scope="module")
def ranks():
    samples = _samples()
    return samples, run_distributed(_score_and_measure, 2, samples)


def test_each_sample_is_scored_once_and_every_rank_gets_all_scores(ranks):
    samples, results = ranks
    (scores0, metrics0, *_), (scores1, *_) = results
    assert scores0 == scores1 and len(scores0) == len(samples)
    assert [s.reward for s in scores0] == [1.0 if _decode(s).startswith("ok") else 0.0 for s in samples]
    half = len(samples) // 2
    first, second = {s.info["pid"] for s in scores0[:half]}, {s.info["pid"] for s in scores0[half:]}
    assert len(first) == len(second) == 1 and first != second  # rank 0's worker, then rank 1's
    assert metrics0["reward/timeouts"] == metrics0["reward/errors"] == metrics0["reward/crashes"] == 0


def test_diversity_equals_the_single_process_reference(ranks):
    samples, results = ranks
    rows = [{"prompt_id": s.prompt_index, "mode": s.mode, "text": _decode(s),
             "reward": 1.0 if _decode(s).startswith("ok") else 0.0, "answer": _decode(s).split()[0]} for s in samples]
    reference = diversity_by_mode(rows, answer_key="answer", tokenize="chars")
    for _, _, full, _ in results:
        assert set(full) == set(reference)
        for key, value in reference.items():
            assert full[key] == pytest.approx(value, abs=1e-12), key


def test_bounded_diversity_is_a_seeded_subsample_and_correctness_uses_every_prompt(ranks):
    samples, results = ranks
    bounded, full = results[0][3], results[0][2]
    assert results[1][3] == bounded
    for mode, name in ((0, "normal"), (1, "high_entropy")):
        per_prompt = [group_metrics([_decode(s) for s in samples if (s.mode, s.prompt_index) == (mode, p)],
                                    tokenize="chars")["div_bleu"] for p in range(PROMPTS)]
        means = [(a + b) / 2 for a, b in itertools.combinations(per_prompt, 2)]
        assert any(bounded[f"{name}/div_bleu"] == pytest.approx(m, abs=1e-12) for m in means)
        assert bounded[f"{name}/div_bleu"] != pytest.approx(full[f"{name}/div_bleu"], abs=1e-9)
        for key in ("accuracy", "best_of_n", "distinct_correct", "count"):
            assert bounded[f"{name}/{key}"] == full[f"{name}/{key}"]
