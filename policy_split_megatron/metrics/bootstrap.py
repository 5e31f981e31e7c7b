"""Confidence intervals of a method's difference to a baseline, by a paired two-level bootstrap.

The design being analysed: S seeds; within seed s, every method starts from the same warm start and is
evaluated on the same P_s prompts (one row per prompt). What varies between seeds (warm start,
sampling, prompt order) and what varies between prompts are both sources of error, so one replicate
(Davison & Hinkley 1997, §3.8, two-stage resampling of a hierarchy)

    1. draws S seeds from the S with replacement;
    2. within each drawn seed, draws its P_s prompts with replacement (a seed drawn twice gets two
       independent prompt draws);
    3. computes the statistic on the drawn rows.

A row holds numbers measured on ONE prompt for BOTH methods (e.g. accuracy of A minus accuracy of B),
so the pairing by seed and by prompt is kept in every replicate. The interval is the percentile
interval of the replicates (numpy's linear quantile). A difference is called significant when its
interval excludes 0, nothing more.

Every statistic here is a function of per-seed column sums of the drawn rows, so a replicate costs a
multinomial draw and a matrix product, not a Python loop over prompts. Seeds are weighted equally
(the mean over seeds of a per-seed value), whatever their prompt counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

# statistic(column sums [R, S, C], row counts [R, S]) -> [R]: R replicates, S seed positions, C columns
SumStatistic = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Interval:
    """A point estimate and its percentile bootstrap interval."""

    estimate: float
    low: float
    high: float
    level: float

    @property
    def significant(self) -> bool:
        """The interval excludes 0."""
        return self.low > 0 or self.high < 0

    def format(self, digits: int = 3, scale: float = 1.0) -> str:
        """'+0.012 [-0.004, +0.027]' (values multiplied by `scale`, e.g. 100 for points)."""
        e, lo, hi = (scale * v for v in (self.estimate, self.low, self.high))
        return f"{e:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]"


def _as_groups(groups: Sequence[np.ndarray | Sequence], columns: int | None = None) -> list[np.ndarray]:
    """Per seed a float array [prompts, C]; a 1-D array is one column."""
    if len(groups) == 0:
        raise ValueError("no seeds: give one array of per-prompt rows per seed")
    out = []
    for s, g in enumerate(groups):
        a = np.asarray(g, dtype=np.float64)
        a = a[:, None] if a.ndim == 1 else a
        if a.ndim != 2 or a.shape[0] == 0:
            raise ValueError(f"seed {s}: expected a non-empty [prompts] or [prompts, columns] array, got shape {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"seed {s}: rows hold NaN or infinite values")
        out.append(a)
    widths = {a.shape[1] for a in out}
    if len(widths) != 1 or (columns is not None and widths != {columns}):
        raise ValueError(f"every seed needs the same number of columns{f' ({columns})' if columns else ''}, "
                         f"got {sorted(widths)}")
    return out


def bootstrap_sums(groups: Sequence[np.ndarray], resamples: int, rng: np.random.Generator, *,
                   resample_seeds: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Column sums of `resamples` two-level replicates (module docstring): ([R, S, C], counts [R, S]).
    `resample_seeds=False` keeps every seed once and resamples prompts only (the prompts' share of the
    error; the seeds' share: give each seed's mean as its only row)."""
    groups = _as_groups(groups)
    n_seeds, width = len(groups), groups[0].shape[1]
    if resample_seeds:  # step 1: seeds with replacement
        drawn = rng.integers(0, n_seeds, size=(resamples, n_seeds))
    else:
        drawn = np.tile(np.arange(n_seeds), (resamples, 1))
    sums = np.empty((resamples, n_seeds, width))
    counts = np.empty((resamples, n_seeds))
    for s, rows in enumerate(groups):
        where = drawn == s
        k = int(where.sum())
        if not k:
            continue
        n = rows.shape[0]
        # step 2: how often each prompt is drawn, independently for each time seed s was drawn
        multiplicity = rng.multinomial(n, np.full(n, 1.0 / n), size=k)
        sums[where] = multiplicity @ rows
        counts[where] = n
    return sums, counts


def bootstrap_interval(groups: Sequence[np.ndarray], statistic: SumStatistic, *, level: float = 0.95,
                       resamples: int = 10_000, seed: int = 0, resample_seeds: bool = True) -> Interval:
    """The statistic on the data and its percentile interval over two-level replicates."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    groups = _as_groups(groups)
    observed = np.stack([g.sum(axis=0) for g in groups])[None]
    estimate = float(statistic(observed, np.array([[g.shape[0] for g in groups]], dtype=np.float64))[0])
    replicates = statistic(*bootstrap_sums(groups, resamples, np.random.default_rng(seed),
                                           resample_seeds=resample_seeds))
    low, high = np.quantile(replicates, [(1 - level) / 2, 1 - (1 - level) / 2])
    return Interval(estimate, float(low), float(high), level)


def mean_of_seed_means(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Column 0: the mean over seeds of each seed's mean over prompts."""
    return (sums[..., 0] / counts).mean(axis=-1)


def ratio_difference(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Columns (num_a, den_a, num_b, den_b): the mean over seeds of sum(num_a)/sum(den_a) - sum(num_b)/sum(den_b),
    e.g. token-weighted entropies (nats summed over a prompt's responses / their tokens)."""
    del counts
    return (sums[..., 0] / sums[..., 1] - sums[..., 2] / sums[..., 3]).mean(axis=-1)


def paired_difference(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]], **kwargs) -> Interval:
    """Mean per-prompt difference a - b: `a[s][p]` and `b[s][p]` are the two methods' values on prompt p
    of seed s (same prompts, same order)."""
    if len(a) != len(b):
        raise ValueError(f"{len(a)} seeds for A but {len(b)} for B")
    rows = []
    for s, (x, y) in enumerate(zip(a, b)):
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        if x.shape != y.shape or x.ndim != 1:
            raise ValueError(f"seed {s}: A has {x.shape} per-prompt values, B {y.shape}: pair them by prompt")
        rows.append(x - y)
    return bootstrap_interval(rows, mean_of_seed_means, **kwargs)


def paired_ratio_difference(a: Sequence[np.ndarray], b: Sequence[np.ndarray], **kwargs) -> Interval:
    """Difference of two ratio estimates paired by prompt: `a[s]`, `b[s]` are [prompts, 2] arrays of
    (numerator, denominator) per prompt of seed s (e.g. entropy nats and tokens of two methods or two modes)."""
    if len(a) != len(b):
        raise ValueError(f"{len(a)} seeds for A but {len(b)} for B")
    rows = []
    for s, (x, y) in enumerate(zip(a, b)):
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        if x.shape != y.shape or x.ndim != 2 or x.shape[1] != 2:
            raise ValueError(f"seed {s}: expected two [prompts, 2] arrays of (numerator, denominator), got {x.shape}"
                             f" and {y.shape}")
        if np.any(x[:, 1] <= 0) or np.any(y[:, 1] <= 0):
            # a replicate could draw only such prompts and divide by zero
            raise ValueError(f"seed {s}: every denominator must be > 0 (e.g. a prompt's response tokens)")
        rows.append(np.concatenate([x, y], axis=1))
    return bootstrap_interval(rows, ratio_difference, **kwargs)
