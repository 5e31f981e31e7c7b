"""Benchmark: scoring one RL step's responses, before (every rank scores every sample, one after
another, in its main thread) and after (samples sharded over the ranks, each rank's share scored
in its reward pool with a per-sample timeout); and Div-BLEU before (each reference recounted for
every hypothesis) and after (each sample's n-grams counted once).

    .venv/bin/python bench/bench_rewards.py [--samples 256] [--timeouts 2] [--workers 2] [--ranks 2]
        [--timeout 5] [--response-chars 2000]

The mix (seeded): math responses of --response-chars characters of "reasoning" ending in a boxed
answer, each problem's answer drawn anew (integers, fractions, polynomials, surds; correct ones
written differently from the reference). 60 % correct, 30 % wrong, 10 % without a boxed answer, and --timeouts responses whose answer is the power tower
`9^{9^{9^{9}}}`, on which math-verify runs into its timeout.

Rows, all measured in this run:
  serial      the verifier called in the main thread for every sample: what each rank did per step
              before (math-verify's own 5 s SIGALRM timeouts apply here);
  pool        the same samples through RewardPool(--workers, --timeout) in this process (after its
              one-off start-up, reported apart);
  sharded     --ranks gloo processes running trainer/scoring.score_samples (each scores its share
              in a pool of --workers, then all-gather): the step's scoring time is the slowest
              rank's, against the serial time, which every rank paid before.
Ratios are rewards/s over the serial row's. On a machine with fewer cores than ranks x workers
the pool's gains are bounded by the cores; the timeouts overlap with other work either way.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))



def _answer(rng: random.Random) -> tuple[str, str, str]:
    """(reference, an equal prediction written differently, a wrong prediction), all distinct per
    draw so that math-verify's parse caches do not make repeated answers free."""
    a, b = rng.randint(2, 999), rng.randint(2, 99)
    kind = rng.randrange(4)
    if kind == 0:
        return str(a), str(a), str(a + 1)
    if kind == 1:
        return f"\\frac{{{a}}}{{{b}}}", f"\\frac{{{2 * a}}}{{{2 * b}}}", f"\\frac{{{b}}}{{{a}}}"
    if kind == 2:
        return f"x^2+{a}x+{b}", f"{b}+{a}x+x^2", f"x^2+{b}x+{a}"
    return f"{a}\\sqrt{{{b}}}", f"\\sqrt{{{b}}}\\cdot {a}", f"{b}\\sqrt{{{a}}}"


FILLER = ("We expand the expression and collect terms; then we check the boundary cases. "
          "Substituting back gives a consistent value, so the computation is verified. ")


def make_mix(samples: int, timeouts: int, response_chars: int, seed: int = 0):
    rng = random.Random(seed)
    body = (FILLER * (response_chars // len(FILLER) + 1))[:response_chars]
    items = []
    for i in range(samples):
        gold, right, wrong = _answer(rng)
        draw = rng.random()
        if i < timeouts:
            tail = "\\boxed{9^{9^{9^{9}}}}"
        elif draw < 0.6:
            tail = f"\\boxed{{{right}}}"
        elif draw < 0.9:
            tail = f"\\boxed{{{wrong}}}"
        else:
            tail = "so the answer follows."
        items.append(({"answer": gold}, f"{body} Therefore {tail}"))
    rng.shuffle(items)
    return items


def _sharded_rank(rank, world_size, items, workers, timeout):
    from policy_split_megatron.rewards import load_reward_fn
    from policy_split_megatron.rollout.types import Sample
    from policy_split_megatron.trainer.scoring import reward_pool, score_samples

    reward_fn = load_reward_fn("math")
    reward_pool(reward_fn, workers=workers, timeout=timeout)  # start-up, as at the first step
    samples = [Sample(i, 0, 0, (0,), (i,), (0.0,), "stop") for i in range(len(items))]
    records = [record for record, _ in items]
    import torch.distributed as dist

    dist.barrier()
    start = time.perf_counter()
    scores, metrics = score_samples(samples, records, reward_fn, lambda s: items[s.prompt_index][1],
                                    workers=workers, timeout=timeout)
    return time.perf_counter() - start, [s.reward for s in scores], metrics


def bench_rewards(args) -> None:
    from policy_split_megatron.rewards import load_reward_fn
    from policy_split_megatron.rewards.pool import RewardPool, failure_counts

    items = make_mix(args.samples, args.timeouts, args.response_chars)
    reward_fn = load_reward_fn("math")
    reward_fn(*items[-1])  # imports math-verify outside the timing
    start = time.perf_counter()
    serial = [reward_fn(record, text).reward for record, text in items]
    t_serial = time.perf_counter() - start

    start = time.perf_counter()
    pool = RewardPool(reward_fn, workers=args.workers, timeout=args.timeout)
    pool.score(items[:1])
    t_start = time.perf_counter() - start
    start = time.perf_counter()
    scores = pool.score(items)
    t_pool = time.perf_counter() - start
    pool.close()

    from policy_split_megatron.distributed import ParallelLayout, spawn_local

    results = spawn_local(_sharded_rank, args.ranks, ParallelLayout(), items, args.workers, args.timeout,
                          timeout=3600, quiet=True)
    t_sharded = max(r[0] for r in results)
    agree = sum(a == b for a, b in zip(serial, results[0][1]))
    print(f"{args.samples} samples ({args.timeouts} power towers), {args.response_chars}-char responses, "
          f"pool of {args.workers} worker(s), timeout {args.timeout:g} s, {os.cpu_count()} cores; "
          f"pool start-up {t_start:.2f} s (once per run)\n")
    print("| variant | seconds | rewards/s | vs serial | timeouts counted |")
    print("|---|---|---|---|---|")
    n = args.samples
    for name, seconds, counted in (
        ("serial, main thread (before; every rank)", t_serial, "-"),
        (f"pool, {args.workers} worker(s), 1 rank", t_pool, int(failure_counts(scores)["reward/timeouts"])),
        (f"sharded over {args.ranks} ranks x {args.workers} worker(s) (after)", t_sharded,
         int(results[0][2]["reward/timeouts"])),
    ):
        print(f"| {name} | {seconds:.2f} | {n / seconds:.1f} | {t_serial / seconds:.2f}x | {counted} |")
    print(f"\nsame rewards as serial: {agree}/{n} (the difference, if any, is the timed-out samples: "
          "0 either way)")


def bench_div_bleu(args) -> None:
    from policy_split_megatron.metrics.diversity import bleu, div_bleu

    rng = random.Random(1)
    k, length = 8, args.bleu_tokens
    groups = [[[rng.randrange(2000) for _ in range(length)] for _ in range(k)] for _ in range(4)]
    start = time.perf_counter()
    before = [1 - sum(bleu(g[i], g[:i] + g[i + 1:]) for i in range(k)) / k for g in groups]
    t_before = time.perf_counter() - start
    start = time.perf_counter()
    after = [div_bleu(g) for g in groups]
    t_after = time.perf_counter() - start
    assert all(abs(a - b) < 1e-12 for a, b in zip(before, after))
    print(f"\nDiv-BLEU of {len(groups)} groups of k={k} samples x {length} tokens: recounting references "
          f"{t_before / len(groups) * 1e3:.0f} ms/group, counting once {t_after / len(groups) * 1e3:.0f} ms/group "
          f"({t_before / t_after:.2f}x), identical values")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--timeouts", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--response-chars", type=int, default=2000)
    parser.add_argument("--bleu-tokens", type=int, default=2000)
    args = parser.parse_args()
    bench_rewards(args)
    bench_div_bleu(args)


if __name__ == "__main__":
    main()
