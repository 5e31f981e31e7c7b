"""The reward pool (rewards/pool.py): the same scores as the verifier called directly; a hanging
sample scores 0 as a timeout after `timeout` seconds, also when scored off the main thread, while
the others are scored; exceptions and dying workers score 0 with their reason and never stop the
caller; math-verify's `9^{9^{9^{9}}}` is a counted timeout."""

from __future__ import annotations

import threading
import time

import pytest

from policy_split_megatron.rewards import load_reward_fn
from policy_split_megatron.rewards.pool import RewardPool, failure_counts

SCRIPTED = "tests.helpers.rewards:scripted_reward"


@pytest.fixture
def pool():
    pools = []

    def make(spec, **kwargs):
        pools.append(RewardPool(spec, **kwargs))
        return pools[-1]

    yield make
    for p in pools:
        p.close()


def test_scores_equal_the_verifier_called_directly(pool):
    items = [({"answer": "0.5"}, r"so \boxed{\frac{1}{2}}"), ({"answer": "3"}, r"\boxed{4}"),
             ({"answer": "x^2+1"}, r"\boxed{1+x^2}"), ({"answer": "2"}, "no box"), ({"answer": "7"}, r"\boxed{7}")]
    items = items * 7  # more than one chunk per worker
    direct = load_reward_fn("math")
    expected = [direct(record, text) for record, text in items]
    scores = pool("math", workers=2, timeout=30).score(items)
    assert [s.reward for s in scores] == [e.reward for e in expected] == [1.0, 0.0, 1.0, 0.0, 1.0] * 7
    assert [s.info["reason"] for s in scores] == [e.info["reason"] for e in expected]
    assert all(s.failure is None for s in scores)


@pytest.mark.parametrize("in_thread", [False, True])
def test_a_hanging_sample_is_a_timeout_and_the_rest_is_scored(pool, in_thread):
    items = [({}, t) for t in ["ok", "wrong", "hang", "ok", "ok", "hang", "wrong", "ok"]]
    reward_pool = pool(SCRIPTED, workers=2, timeout=1.5)
    out = {}

    def run():
        start = time.monotonic()
        out["scores"], out["seconds"] = reward_pool.score(items), time.monotonic() - start

    if in_thread:  # SIGALRM-based timeouts cannot work here; the pool's must
        thread = threading.Thread(target=run)
        thread.start()
        thread.join(60)
    else:
        run()
    scores = out["scores"]
    assert [s.reward for s in scores] == [1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0]
    assert [s.failure for s in scores] == [None, None, "timeout", None, None, "timeout", None, None]
    assert failure_counts(scores)["reward/timeouts"] == 2
    assert out["seconds"] < 10  # two timeouts of 1.5 s, not an hour
    assert [s.reward for s in reward_pool.score([({}, "ok")] * 3)] == [1.0] * 3  # replaced workers work


def test_exceptions_and_dying_workers_score_zero_with_their_reason(pool):
    items = [({"answer": "A"}, t) for t in ["ok", "raise", "ok", "die", "ok", "wrong"]]
    scores = pool(SCRIPTED, workers=1, timeout=30).score(items)
    assert [s.reward for s in scores] == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    assert [s.failure for s in scores] == [None, "error: ValueError", None, "crash", None, None]
    assert "cannot read 'A'" in scores[1].info["error"]
    assert failure_counts(scores) == {"reward/timeouts": 0.0, "reward/errors": 1.0, "reward/crashes": 1.0}


def test_in_process_scoring_also_survives_exceptions(pool):
    scores = pool(SCRIPTED, workers=0, timeout=1).score([({}, "ok"), ({}, "raise")])
    assert [(s.reward, s.failure) for s in scores] == [(1.0, None), (0.0, "error: ValueError")]


def test_a_sample_that_kills_every_worker_never_stops_the_caller(pool):
    scores = pool(SCRIPTED, workers=1, timeout=30).score([({}, "die")] * 5 + [({}, "ok")])
    assert [(s.reward, s.failure) for s in scores] == [(0.0, "crash")] * 5 + [(1.0, None)]


def test_workers_that_cannot_start_are_an_error_not_a_loop(pool):
    reward_pool = pool("tests.helpers.rewards_unloadable:reward", workers=1, timeout=30)
    with pytest.raises(RuntimeError, match="cannot start"):
        reward_pool.score([({}, "x")] * 3)


def test_math_verify_power_tower_is_a_counted_timeout(pool):
    items = [({"answer": "3"}, r"\boxed{9^{9^{9^{9}}}}"), ({"answer": "0.5"}, r"\boxed{\frac{1}{2}}")]
    start = time.monotonic()
    scores = pool("math", workers=2, timeout=2.0).score(items)
    assert [(s.reward, s.failure) for s in scores] == [(0.0, "timeout"), (1.0, None)]
    assert time.monotonic() - start < 15
