"""Run a test body in N real processes joined by a gloo process group.

Every distributed test goes through `run_distributed`, a thin wrapper over the library's
`spawn_local`: fresh interpreters (so Megatron's global parallel state never leaks between tests),
gloo, and megatron-core's parallel state with the given TP/PP. `fn(rank, world_size, *args)` must
be module-level; return values come back as a list indexed by rank.
"""

from __future__ import annotations

from policy_split_megatron.distributed import ParallelLayout, spawn_local


def run_distributed(fn, world_size: int = 2, *args, tp: int = 1, pp: int = 1, vpp: int | None = None,
                    timeout: float = 600):
    """Run fn(rank, world_size, *args) on `world_size` gloo ranks with Megatron TP=tp, PP=pp and
    `vpp` virtual pipeline stages per stage (None: one)."""
    try:
        return spawn_local(fn, world_size, ParallelLayout(tp, pp, vpp), *args, timeout=timeout)
    except RuntimeError as err:
        raise AssertionError(str(err)) from None
