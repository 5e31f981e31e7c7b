"""Scoring many responses in worker processes, each sample under its own timeout.

    pool = RewardPool("math", workers=4, timeout=5.0)
    scores = pool.score([(record, response_text), ...])   # one Score per item, in order
    pool.close()

Why processes: a verifier can hang (math-verify on `\\boxed{9^{9^{9^{9}}}}` runs into its 5 s
limit, and its limit is SIGALRM, which only a process's main thread can use; a custom verifier may
have none). A worker that exceeds `timeout` seconds on one sample is killed and replaced: the
sample scores 0 with failure "timeout". A verifier that raises scores 0 with failure
"error: <ExceptionType>", and a worker that dies (segfault, OOM) scores its sample 0 with failure
"crash". Nothing of this stops the caller. Inside the workers the pool's timeout is the only one:
`in_reward_worker()` tells verifiers with their own alarm (math_answer.py) to leave theirs off, so
every timeout is counted.

Workers come from a fork server that has imported the reward function's module once, so starting
or replacing one takes milliseconds; each holds at most two samples (the one it scores and the
next) and streams one result per sample back, so a timeout is charged to the sample that was
running and delays at most one other. `workers=0` scores in the
calling process (no timeout beyond the verifier's own; exceptions still score 0).
"""

from __future__ import annotations

import atexit
import collections
import logging
import multiprocessing
import os
import time
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from typing import Any, Mapping, Sequence

from policy_split_megatron.rewards.base import REWARD_ALIASES, RewardFunction, load_reward_fn

_INSIDE_WORKER = False


def in_reward_worker() -> bool:
    """True in a RewardPool worker, where the pool enforces the per-sample timeout."""
    return _INSIDE_WORKER


@dataclass(frozen=True)
class Score:
    reward: float
    info: dict = field(default_factory=dict)
    failure: str | None = None  # None, "timeout", "crash" or "error: <ExceptionType>"


def _plain_info(info: Mapping[str, Any]) -> dict:
    """The picklable, loggable part of a verifier's info dict (strings and numbers)."""
    return {k: v for k, v in info.items() if v is None or isinstance(v, (str, int, float, bool))}


def score_one(fn: RewardFunction, record: Mapping[str, Any], text: str) -> Score:
    """One sample in this process; an exception scores 0 with its type as the failure."""
    try:
        out = fn(record, text)
    except Exception as err:  # noqa: BLE001 - a verifier's failure must not stop training
        return Score(0.0, {"error": f"{type(err).__name__}: {err}"[:500]}, f"error: {type(err).__name__}")
    return Score(out.reward, _plain_info(out.info))


def _worker_main(conn, spec: str, options: dict) -> None:
    global _INSIDE_WORKER
    _INSIDE_WORKER = True
    from policy_split_megatron.process_tree import die_with_parent

    die_with_parent(os.getppid())  # the fork server; it ends with the process that owns the pool
    # math-verify warns on every call that its own timeout is off: here the pool's governs.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    fn = load_reward_fn(spec, **options)
    conn.send("ready")  # a worker that dies before this could not start: not a sample's fault
    while True:
        try:
            chunk = conn.recv()
        except (EOFError, OSError):
            return
        if chunk is None:
            return
        for index, record, text in chunk:
            result = score_one(fn, record, text)
            conn.send((index, result.reward, result.info, result.failure))


def _preload(spec: str) -> list[str]:
    """Modules the fork server imports once for every worker: the reward function's module and
    what it lists in POOL_PRELOAD (math_answer.py: math_verify, which it imports lazily)."""
    import importlib

    path = REWARD_ALIASES.get(spec.strip(), spec.strip())
    module = path.partition(":")[0] if ":" in path else path.rpartition(".")[0]
    return [module, *getattr(importlib.import_module(module), "POOL_PRELOAD", ())]


class _Worker:
    def __init__(self, ctx, spec: str, options: dict):
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child, spec, options), daemon=True)
        self.process.start()
        child.close()
        self.running: collections.deque[int] = collections.deque()  # sent, not yet answered
        self.since = 0.0  # when the sample now running started
        self.ready = False

    def stop(self, kill: bool = False) -> None:
        if kill:
            # Process.kill, not os.kill: the worker may exit and be reaped between a liveness check
            # and the signal (seen in CI as ProcessLookupError); multiprocessing ignores that race
            self.process.kill()
        else:
            try:
                self.conn.send(None)
            except OSError:
                pass
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=5)
        self.conn.close()


class RewardPool:
    """`workers` processes scoring with reward function `spec` (see module docstring)."""

    IN_FLIGHT = 2
    MAX_START_FAILURES = 3  # workers in a row that die before they are ready: a defect, raise
    START_SECONDS = 120.0  # a worker's time to become ready (importing the verifier) before it counts as failed

    def __init__(self, spec: str | RewardFunction, *, workers: int, timeout: float,
                 options: Mapping[str, Any] | None = None):
        if isinstance(spec, RewardFunction):
            spec, options = spec.spec, {**spec.options, **(options or {})}
        if workers < 0:
            raise ValueError(f"reward workers must be >= 0, got {workers}")
        if not timeout > 0:
            raise ValueError(f"reward timeout must be > 0 seconds, got {timeout}")
        self.spec, self.options = spec, dict(options or {})
        self.timeout, self.num_workers = float(timeout), workers
        self._fn = load_reward_fn(spec, **self.options)  # fails here, in the caller, on a bad spec
        self._workers: list[_Worker] = []
        self._start_failures = 0
        self._ctx = None
        if workers:
            self._ctx = multiprocessing.get_context("forkserver")
            self._ctx.set_forkserver_preload(_preload(spec))
            self._workers = [_Worker(self._ctx, spec, self.options) for _ in range(workers)]
            atexit.register(self.close)

    def score(self, items: Sequence[tuple[Mapping[str, Any], str]]) -> list[Score]:
        if not self._workers:
            return [score_one(self._fn, record, text) for record, text in items]
        results: list[Score | None] = [None] * len(items)
        todo = collections.deque(range(len(items)))
        remaining = len(items)
        while remaining:
            remaining -= self._hand_out(items, results, todo)
            busy = [w for w in self._workers if w.running]
            if not busy:  # a dead worker was just replaced: hand its samples to the new one
                continue
            now = time.monotonic()
            next_deadline = min(self._deadline(w) for w in busy)
            ready = wait([w.conn for w in busy], timeout=max(0.0, next_deadline - now))
            for worker in busy:
                if worker.conn in ready:
                    remaining -= self._receive(worker, results, todo)
                elif time.monotonic() > self._deadline(worker):
                    remaining -= self._replace(worker, results, todo, "timeout")
        return results  # type: ignore[return-value]

    def _deadline(self, worker: _Worker) -> float:
        return worker.since + (self.timeout if worker.ready else max(self.timeout, self.START_SECONDS))

    def _hand_out(self, items, results: list, todo: collections.deque) -> int:
        """Keep IN_FLIGHT samples at each worker: the one it runs and the next, so it never waits
        for the parent, while a timeout strands at most one other sample behind the slow one.
        A worker found dead on sending (its sample killed it before the parent saw the EOF) is
        replaced here, charging the sample it was running; returns the samples so charged."""
        charged = 0
        for worker in list(self._workers):
            while todo and len(worker.running) < self.IN_FLIGHT:
                index = todo.popleft()
                try:
                    worker.conn.send([(index, items[index][0], items[index][1])])
                except OSError:  # BrokenPipeError: the worker is gone
                    todo.appendleft(index)
                    charged += self._replace(worker, results, todo, "crash")
                    break
                if not worker.running:
                    worker.since = time.monotonic()
                worker.running.append(index)
        return charged

    def _receive(self, worker: _Worker, results: list, todo: collections.deque) -> int:
        done = 0
        try:
            while worker.running and worker.conn.poll():
                message = worker.conn.recv()
                if message == "ready":
                    worker.ready, worker.since, self._start_failures = True, time.monotonic(), 0
                    continue
                index, reward, info, failure = message
                worker.running.remove(index)
                results[index] = Score(reward, info, failure)
                worker.since = time.monotonic()
                done += 1
        except (EOFError, OSError):  # the worker died: charge the sample it was running
            return done + self._replace(worker, results, todo, "crash")
        return done

    def _replace(self, worker: _Worker, results: list, todo: collections.deque, failure: str) -> int:
        """Kill `worker` and start another. A worker that was ready charges its running sample (0,
        `failure`) and returns 1; one that never started charges nothing (0). The rest of its chunk
        is requeued."""
        charged = 0
        if worker.ready:
            culprit = worker.running.popleft()
            results[culprit] = Score(0.0, {}, failure)
            charged = 1
        else:
            self._start_failures += 1
            if self._start_failures >= self.MAX_START_FAILURES:
                raise RuntimeError(f"reward workers for {self.spec!r} cannot start (last exit code "
                                   f"{worker.process.exitcode}); their error is printed above")
        todo.extendleft(reversed(worker.running))
        worker.running.clear()
        worker.stop(kill=True)
        self._workers[self._workers.index(worker)] = _Worker(self._ctx, self.spec, self.options)
        return charged

    def close(self) -> None:
        for worker in self._workers:
            worker.stop()
        self._workers = []


def failure_counts(scores: Sequence[Score]) -> dict[str, float]:
    """reward/timeouts, reward/errors (verifier exceptions) and reward/crashes of a batch."""
    counts = {"reward/timeouts": 0.0, "reward/errors": 0.0, "reward/crashes": 0.0}
    for score in scores:
        if score.failure == "timeout":
            counts["reward/timeouts"] += 1
        elif score.failure == "crash":
            counts["reward/crashes"] += 1
        elif score.failure:
            counts["reward/errors"] += 1
    return counts
