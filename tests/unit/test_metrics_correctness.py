"""avg@n, unbiased pass@k (Chen et al. 2021) and maj@n against hand-computed cases and exact rational
arithmetic."""

import math
import random
from fractions import Fraction

import pytest

from policy_split_megatron.metrics import benchmark_correctness, majority_vote, pass_at_k


def exact_pass_at_k(n, c, k):
    if n - c < k:
        return Fraction(1)
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


def test_pass_at_k_hand_computed():
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # C(3,2)/C(5,2) = 3/10
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)  # C(3,2)/C(4,2) = 3/6
    assert pass_at_k(8, 3, 4) == pytest.approx(1 - 5 / 70)  # C(5,4)/C(8,4) = 5/70
    assert pass_at_k(8, 0, 3) == 0.0 and pass_at_k(8, 8, 1) == 1.0
    assert pass_at_k(8, 6, 3) == 1.0  # only 2 wrong samples: every 3-subset holds a correct one
    for n in range(1, 9):
        for c in range(n + 1):
            assert pass_at_k(n, c, 1) == pytest.approx(c / n)  # pass@1 = avg@n
            assert pass_at_k(n, c, n) == (1.0 if c else 0.0)  # pass@n = best-of-n
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


def test_pass_at_k_is_exact_where_binomials_overflow_floats():
    # C(2000, 1000) ~ 2e600 does not fit in a float; the product form needs no binomial
    with pytest.raises(OverflowError):
        float(math.comb(2000, 1000))
    assert pass_at_k(1000, 1, 500) == pytest.approx(0.5, abs=1e-12)  # C(999,500)/C(1000,500) = 500/1000
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 3000)
        c, k = rng.randint(0, n), rng.randint(1, n)
        assert pass_at_k(n, c, k) == pytest.approx(float(exact_pass_at_k(n, c, k)), rel=1e-9, abs=1e-12)
    curve = [pass_at_k(64, 5, k) for k in range(1, 65)]
    assert all(a <= b + 1e-15 for a, b in zip(curve, curve[1:]))


def test_majority_vote_hand_computed():
    assert majority_vote(["1", "2", "2", None], [1, 0, 0, 0]) == 0.0  # the wrong "2" has two votes
    assert majority_vote(["2", "2", "1", "1", "1"], [0, 0, 1, 1, 1]) == 1.0
    # correct answers form one class however they are spelled: 2 votes against 1
    assert majority_vote(["1/2", "0.5", "3"], [1.0, 1.0, 0.0]) == 1.0
    assert majority_vote(["a", "b"], [1, 0]) == 0.5  # a two-way tie: half credit
    assert majority_vote(["a", "x", "y"], [1, 0, 0]) == pytest.approx(1 / 3)
    assert majority_vote(["a", "a", "x", "x", "y"], [1, 1, 0, 0, 0]) == 0.5
    assert majority_vote([None, None, "x"], [0, 0, 0]) == 0.0  # no answer: no vote
    assert majority_vote([None, None, "c"], [0, 0, 1]) == 1.0
    assert majority_vote([None, None], [0, 0]) == 0.0
    with pytest.raises(ValueError):
        majority_vote(["a"], [1, 0])


def test_benchmark_correctness_hand_computed():
    groups = [([1, 0, 0, 0], ["7", "3", "3", None]), ([1, 1, 0, 0], ["5", "5", "6", "9"])]
    out = benchmark_correctness(groups)
    assert set(out) == {"avg@4", "pass@1", "pass@2", "pass@3", "pass@4", "maj@4"}
    assert out["avg@4"] == pytest.approx(3 / 8) and out["pass@1"] == pytest.approx(3 / 8)
    assert out["pass@2"] == pytest.approx((0.5 + 5 / 6) / 2)  # 1 - 3/6 and 1 - 1/6
    assert out["pass@3"] == pytest.approx((0.75 + 1.0) / 2)  # 1 - C(3,3)/C(4,3) and 1
    assert out["pass@4"] == 1.0
    assert out["maj@4"] == pytest.approx((0.0 + 1.0) / 2)
    assert "maj@2" not in benchmark_correctness([([1, 0], None)])  # no answer keys: no vote
    with pytest.raises(ValueError, match="same number"):
        benchmark_correctness([([1, 0], None), ([1], None)])
