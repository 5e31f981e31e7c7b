"""A reward function that loads in the main process but not in a reward-pool worker, as when a
worker lacks an import the verifier needs: tests/unit/test_reward_pool.py."""

import multiprocessing


def _reward(record, response):
    return 1.0


def __getattr__(name):
    if name == "reward" and multiprocessing.parent_process() is None:
        return _reward
    raise AttributeError(name)
