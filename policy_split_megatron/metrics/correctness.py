"""Correctness of the n samples of one prompt: avg@n, unbiased pass@k, majority vote (maj@n), and
their means over a benchmark's prompts. Pure Python.

A sample counts as correct when its reward is > 0 (the shipped verifiers give 1.0 or 0.0).

pass@k (Chen et al., 2021, "Evaluating Large Language Models Trained on Code", Eq. 1): the chance
that at least one of k samples drawn without replacement from the n is correct, estimated
without bias from c correct samples out of n as

    pass@k = 1 - C(n - c, k) / C(n, k) = 1 - prod_{i = n-c+1}^{n} (1 - k / i)

The product form (the paper's numerically stable implementation) never builds the binomials,
which overflow floats for n in the hundreds. pass@1 = c / n = avg@n; pass@n = best-of-n.

maj@n (majority vote, "self-consistency", Wang et al., 2023): the most frequent final answer
among the n samples is the prompt's answer; maj@n is 1 when it is correct. Answers are keyed as
follows: every correct sample belongs to ONE class (each is equivalent to the reference, hence to
each other, whatever its spelling, e.g. "0.5" and "\\frac{1}{2}"); a wrong sample's class is its
answer key (the verifier's extracted answer); a sample without an answer (key None) does not vote.
Ties are split evenly: with t classes tied for the most votes, one of them correct, maj@n is 1/t,
the expected score of a uniformly random tie-break (so the result does not depend on sample order).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Hashable, Iterable, Sequence


def is_correct(reward: Any) -> bool:
    return bool(reward) and reward > 0


def accuracy(correct: Sequence[Any]) -> float:
    """Mean correctness (rewards or flags) of the samples: the paper's accuracy averaged over k samples."""
    return sum(float(c) for c in correct) / len(correct) if correct else 0.0


def best_of_n(correct: Iterable[Any]) -> float:
    """1.0 when any of the N samples is correct (truthy / reward > 0), else 0.0."""
    return 1.0 if any(is_correct(c) for c in correct) else 0.0


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (module docstring)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0  # every k-subset holds a correct sample
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def majority_vote(keys: Sequence[Hashable | None], correct: Sequence[Any]) -> float:
    """maj@n of one prompt's samples (module docstring): `keys[i]` is sample i's answer key."""
    if len(keys) != len(correct):
        raise ValueError(f"{len(keys)} answer keys but {len(correct)} correctness values")
    right = object()  # the one class of all correct samples
    votes = Counter(right if is_correct(ok) else key for key, ok in zip(keys, correct)
                    if is_correct(ok) or key is not None)
    if not votes:
        return 0.0
    top = max(votes.values())
    tied = [answer for answer, count in votes.items() if count == top]
    return 1.0 / len(tied) if right in tied else 0.0


def benchmark_correctness(groups: Sequence[tuple[Sequence[Any], Sequence[Hashable | None] | None]]) -> dict[str, float]:
    """Means over prompts of avg@n, pass@k for k = 1..n and (when keys are given) maj@n.

    `groups`: per prompt, (rewards of its n samples, their answer keys or None). Every prompt must
    have the same n. Keys: "avg@n", "pass@1", ..., "pass@n", "maj@n" with n written out."""
    if not groups:
        return {}
    sizes = {len(rewards) for rewards, _ in groups}
    if len(sizes) != 1 or 0 in sizes:
        raise ValueError(f"every prompt needs the same number n >= 1 of samples, got sizes {sorted(sizes)}")
    (n,) = sizes
    counts = [sum(is_correct(r) for r in rewards) for rewards, _ in groups]
    out = {f"avg@{n}": sum(counts) / (n * len(groups))}
    for k in range(1, n + 1):
        out[f"pass@{k}"] = sum(pass_at_k(n, c, k) for c in counts) / len(groups)
    if all(keys is not None for _, keys in groups):
        out[f"maj@{n}"] = sum(majority_vote(keys, rewards) for rewards, keys in groups) / len(groups)
    return out
