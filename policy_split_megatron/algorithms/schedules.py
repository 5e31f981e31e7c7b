"""Coefficient schedules: the entropy-bonus coefficient and KL-Cov's beta, annealed toward a floor.

Lei & Baehr (arXiv 2604.09676, Thm VII.2/VII.3 as reported) argue that an entropy bonus converges to a
stationary point of the REGULARISED objective, while KL-Cov with beta_t -> 0 (Robbins-Monro decay) is
asymptotically unbiased; Cui et al.'s released recipes keep beta constant. None of the anchors ships an
annealed beta, so these schedules are this package's own:

  constant:       v_t = v_0
  linear:         v_t = v_0 + (v_end - v_0) * min(t / N, 1)           (reaches v_end at t = N, stays there)
  cosine:         v_t = v_end + (v_0 - v_end) * (1 + cos(pi min(t/N, 1))) / 2       (idem)
  robbins_monro:  v_t = v_end + (v_0 - v_end) / (1 + t / t0) ** p,   p in (0.5, 1]

For p in (0.5, 1] and v_end = 0, sum_t v_t = inf and sum_t v_t^2 < inf: the classical Robbins-Monro
conditions (the decay is slow enough to keep acting, fast enough to vanish). It approaches v_end
monotonically but never reaches it; t0 sets how many steps pass before the decay is noticeable
(v_{t0} = v_0 / 2^p). `t` is the optimizer step (0-based); N = total_steps.
"""

from __future__ import annotations

import math

SCHEDULE_KINDS = ("constant", "linear", "cosine", "robbins_monro")


def schedule_value(
    kind: str,
    step: int,
    *,
    initial: float,
    final: float = 0.0,
    total_steps: int | None = None,
    t0: float = 100.0,
    power: float = 1.0,
) -> float:
    """Value of the schedule at `step` (see the module docstring for the formulas)."""
    if kind not in SCHEDULE_KINDS:
        raise ValueError(f"schedule kind must be one of {SCHEDULE_KINDS}, got {kind!r}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if kind == "constant":
        return float(initial)
    if kind in ("linear", "cosine"):
        if not total_steps or total_steps <= 0:
            raise ValueError(f"a {kind} schedule needs total_steps > 0, got {total_steps!r}")
        frac = min(step / total_steps, 1.0)
        if kind == "linear":
            return float(initial + (final - initial) * frac)
        if frac >= 1.0:  # exactly the floor, not final + 1e-17 from cos(pi)
            return float(final)
        return float(final + (initial - final) * 0.5 * (1.0 + math.cos(math.pi * frac)))
    if t0 <= 0:
        raise ValueError(f"robbins_monro needs t0 > 0, got {t0}")
    if not 0.5 < power <= 1.0:
        raise ValueError(f"robbins_monro needs power in (0.5, 1] (Robbins-Monro conditions), got {power}")
    return float(final + (initial - final) / (1.0 + step / t0) ** power)
