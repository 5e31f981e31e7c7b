"""The paired two-level bootstrap (metrics/bootstrap.py) against cases whose answer is known by hand."""

import numpy as np
import pytest

from policy_split_megatron.metrics.bootstrap import (
    Interval,
    bootstrap_interval,
    bootstrap_sums,
    mean_of_seed_means,
    paired_difference,
    paired_ratio_difference,
)


def _replicates(groups, resamples=40_000, seed=1):
    sums, counts = bootstrap_sums(groups, resamples, np.random.default_rng(seed))
    return mean_of_seed_means(sums, counts)


def test_pairing_removes_what_both_methods_share():
    # Per-prompt accuracies spread over [0, 1]; B is A shifted by exactly 0.1 on every prompt. An
    # unpaired bootstrap would give an interval as wide as the spread; paired, every replicate is 0.1.
    rng = np.random.default_rng(0)
    a = [rng.uniform(0.2, 1.0, size=50) for _ in range(5)]
    b = [x - 0.1 for x in a]
    interval = paired_difference(a, b, resamples=2000)
    assert interval.estimate == pytest.approx(0.1)
    assert interval.low == pytest.approx(0.1) and interval.high == pytest.approx(0.1)
    assert interval.significant


def test_one_seed_two_prompts_matches_the_enumerated_distribution():
    # Differences (0, 1): a resample of 2 prompts has mean 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4.
    reps = _replicates([np.array([0.0, 1.0])])
    for value, probability in ((0.0, 0.25), (0.5, 0.5), (1.0, 0.25)):
        assert np.mean(np.isclose(reps, value)) == pytest.approx(probability, abs=0.01)
    interval = paired_difference([[0.0, 1.0]], [[0.0, 0.0]], resamples=40_000)
    assert (interval.estimate, interval.low, interval.high) == (0.5, 0.0, 1.0)
    assert not interval.significant


def test_seeds_are_resampled_not_only_prompts():
    # Seed 0: every prompt differs by 0; seed 1: by 1. Resampling prompts within a seed changes
    # nothing, so all spread comes from drawing seeds: mean of 2 draws from {0, 1} = 0, 0.5, 1 with
    # probabilities 1/4, 1/2, 1/4. A prompt-only bootstrap would always give 0.5.
    reps = _replicates([np.zeros(30), np.ones(30)])
    for value, probability in ((0.0, 0.25), (0.5, 0.5), (1.0, 0.25)):
        assert np.mean(np.isclose(reps, value)) == pytest.approx(probability, abs=0.01)
    prompts_only = bootstrap_interval([np.zeros(30), np.ones(30)], mean_of_seed_means, resample_seeds=False)
    assert (prompts_only.low, prompts_only.high) == (0.5, 0.5)


def test_a_seed_drawn_twice_gets_independent_prompt_draws():
    # Two seeds with the same prompts' differences (0, 1). With an independent prompt draw per drawn
    # seed, a replicate is the mean of two independent values from {0, 0.5, 1} (1/4, 1/2, 1/4), so
    # P(0.25) = 2 * 1/4 * 1/2 = 1/4. Sharing one draw when a seed is drawn twice (half the replicates)
    # would give P(0.25) = 1/8.
    reps = _replicates([np.array([0.0, 1.0]), np.array([0.0, 1.0])])
    assert np.mean(np.isclose(reps, 0.25)) == pytest.approx(0.25, abs=0.01)
    assert np.mean(np.isclose(reps, 0.75)) == pytest.approx(0.25, abs=0.01)


def test_seeds_weigh_equally_whatever_their_prompt_counts():
    # Seed 0: one prompt, difference 1; seed 1: three prompts, difference 0 -> (1 + 0) / 2, not 1/4.
    interval = paired_difference([[1.0], [0.0, 0.0, 0.0]], [[0.0], [0.0, 0.0, 0.0]], resamples=100)
    assert interval.estimate == pytest.approx(0.5)


def test_standard_error_of_a_large_sample_mean():
    # One seed, 2000 prompts of 0/1 with 30% ones: the bootstrap standard deviation of the mean is the
    # plug-in sqrt(p (1 - p) / n) (to Monte-Carlo error), and the 95% interval is about +-1.96 of it.
    values = np.zeros(2000)
    values[:600] = 1.0
    reps = _replicates([values], resamples=20_000)
    se = np.sqrt(0.3 * 0.7 / 2000)
    assert reps.std() == pytest.approx(se, rel=0.03)
    interval = bootstrap_interval([values], mean_of_seed_means, resamples=20_000, seed=3)
    assert interval.low == pytest.approx(0.3 - 1.96 * se, abs=0.003)
    assert interval.high == pytest.approx(0.3 + 1.96 * se, abs=0.003)


def test_ratio_difference_by_hand():
    # Seed 0, mode A: nats (2, 4) over tokens (1, 3) -> 6/4 = 1.5; mode B: (1, 1) over (1, 1) -> 1.0.
    # Seed 1, A: 3/3 = 1.0; B: 6/2 = 3.0. Per seed 0.5 and -2.0 -> mean -0.75 (a pooled ratio would differ).
    a = [np.array([[2.0, 1.0], [4.0, 3.0]]), np.array([[3.0, 3.0]])]
    b = [np.array([[1.0, 1.0], [1.0, 1.0]]), np.array([[6.0, 2.0]])]
    interval = paired_ratio_difference(a, b, resamples=500)
    assert interval.estimate == pytest.approx(-0.75)
    assert interval.low <= -0.75 <= interval.high
    # equal ratios on every prompt: the difference is 0 in every replicate
    same = paired_ratio_difference(a, a, resamples=200)
    assert (same.estimate, same.low, same.high) == (0.0, 0.0, 0.0)


def test_same_seed_same_interval_and_formatting():
    rng = np.random.default_rng(5)
    a = [rng.uniform(size=20) for _ in range(3)]
    b = [rng.uniform(size=20) for _ in range(3)]
    assert paired_difference(a, b, seed=7, resamples=300) == paired_difference(a, b, seed=7, resamples=300)
    assert Interval(0.0123, -0.004, 0.0271, 0.95).format(1, scale=100) == "+1.2 [-0.4, +2.7]"
    assert Interval(0.1, 0.05, 0.2, 0.95).significant and Interval(-0.1, -0.2, -0.01, 0.95).significant


@pytest.mark.parametrize("call, message", [
    (lambda: paired_difference([[1.0, 0.0]], [[1.0]]), "pair them by prompt"),
    (lambda: paired_difference([[1.0]], [[1.0], [0.0]]), "1 seeds for A but 2 for B"),
    (lambda: paired_difference([], []), "no seeds"),
    (lambda: paired_difference([[float("nan")]], [[0.0]]), "NaN"),
    (lambda: paired_difference([[1.0]], [[0.0]], level=1.0), "level"),
    (lambda: paired_ratio_difference([np.array([[1.0, 0.0]])], [np.array([[1.0, 1.0]])]), "denominator"),
    (lambda: paired_ratio_difference([np.ones(3)], [np.ones(3)]), "numerator, denominator"),
])
def test_bad_input_is_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()
