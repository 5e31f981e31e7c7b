"""Process-group set-up shared by the trainer, the tools and the tests.

One place initialises torch.distributed and megatron-core's parallel state, so that the backend
(gloo on CPU, NCCL on CUDA) and the tensor/pipeline layout are chosen the same way everywhere.
"""

from __future__ import annotations

import os
import pickle
import queue as queue_module
import re
import signal
import socket
import threading
import time
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from policy_split_megatron.errors import RankUserError, UserError, is_user_error, one_line
from policy_split_megatron.process_tree import Watchdog, describe_exit, die_with_parent, kill_group, lead_own_group

__all__ = ["ParallelLayout", "LayoutError", "init_distributed", "destroy_distributed", "spawn_local",
           "die_with_parent", "SpawnTerminated"]


class LayoutError(UserError, ValueError):
    """The number of processes does not fit the parallel layout."""


@dataclass(frozen=True)
class ParallelLayout:
    """The parallel layout of the Megatron policy. world_size = tp * pp * dp. `virtual_pipeline`:
    model chunks per pipeline stage (the interleaved 1F1B schedule); None = one."""

    tensor_parallel: int = 1
    pipeline_parallel: int = 1
    virtual_pipeline: int | None = None

    def data_parallel(self, world_size: int) -> int:
        model_parallel = self.tensor_parallel * self.pipeline_parallel
        if world_size % model_parallel:
            raise LayoutError(
                f"world size {world_size} is not divisible by tensor_parallel x pipeline_parallel = "
                f"{self.tensor_parallel} x {self.pipeline_parallel}; launch a multiple of "
                f"{model_parallel} processes or change the layout"
            )
        return world_size // model_parallel


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


# -- Slurm --------------------------------------------------------------------------------------

SLURM_PORT_BASE = 10000
SLURM_PORT_SPAN = 20000
"""MASTER_PORT of a Slurm job = SLURM_PORT_BASE + job id % SLURM_PORT_SPAN (below the Linux ephemeral
range); slurm/common.sh uses the same formula, so the batch script and the ranks agree."""

_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


def _split_top_level(text: str, sep: str = ",") -> list[str]:
    """Split on `sep` outside brackets: "a[1-2],b" -> ["a[1-2]", "b"]."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced ']' in Slurm node list {text!r}")
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise ValueError(f"unbalanced '[' in Slurm node list {text!r}")
    parts.append(text[start:])
    return parts


def _expand_bracket(body: str, nodelist: str) -> list[str]:
    values = []
    for item in body.split(","):
        m = _RANGE.match(item.strip())
        if not m:
            raise ValueError(f"bad range {item!r} in Slurm node list {nodelist!r}")
        lo, hi = m.group(1), m.group(2)
        if hi is None:
            values.append(lo)
            continue
        if int(hi) < int(lo):
            raise ValueError(f"descending range {item!r} in Slurm node list {nodelist!r}")
        width = len(lo)  # zero padding follows the lower bound: node[08-10] -> node08 node09 node10
        values.extend(str(n).zfill(width) for n in range(int(lo), int(hi) + 1))
    return values


def expand_nodelist(nodelist: str) -> list[str]:
    """Host names of a Slurm node list in its compact form, in order, as `scontrol show hostnames`
    prints them: "gpu[01-03,07],login1" -> gpu01 gpu02 gpu03 gpu07 login1. Several bracket groups
    in one name expand as a product ("r[1-2]n[1-2]" -> r1n1 r1n2 r2n1 r2n2)."""
    hosts: list[str] = []
    for name in _split_top_level(nodelist.strip()):
        name = name.strip()
        if not name:
            continue
        expanded = [""]
        for literal, body in re.findall(r"([^\[]*)(?:\[([^\]]*)\])?", name):
            if not literal and not body:
                continue
            choices = _expand_bracket(body, nodelist) if body else [""]
            expanded = [prefix + literal + choice for prefix in expanded for choice in choices]
        hosts.extend(expanded)
    if not hosts:
        raise ValueError(f"empty Slurm node list {nodelist!r}")
    return hosts


def tasks_on_this_node(environ: Mapping[str, str] = os.environ) -> int | None:
    """Processes the launcher started on this node: torchrun's LOCAL_WORLD_SIZE, or this node's entry
    of Slurm's SLURM_STEP_TASKS_PER_NODE / SLURM_TASKS_PER_NODE ("4(x2),2": 4 on nodes 0-1, 2 on
    node 2). None when neither is known."""
    if "LOCAL_WORLD_SIZE" in environ:
        return int(environ["LOCAL_WORLD_SIZE"])
    spec = environ.get("SLURM_STEP_TASKS_PER_NODE") or environ.get("SLURM_TASKS_PER_NODE")
    if not spec:
        return None
    counts: list[int] = []
    for item in spec.split(","):
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", item.strip())
        if not m:
            raise ValueError(f"cannot read SLURM tasks per node {spec!r}")
        counts.extend([int(m.group(1))] * int(m.group(2) or 1))
    node = int(environ.get("SLURM_NODEID", 0))
    return counts[node] if node < len(counts) else counts[-1]


def in_slurm_step(environ: Mapping[str, str] = os.environ) -> bool:
    """True in a task started by `srun` (a job step); False in a batch script or `salloc` shell."""
    return "SLURM_STEP_ID" in environ or "SLURM_STEPID" in environ


def slurm_rendezvous_env(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The torch.distributed variables a Slurm task lacks when no torchrun started it: MASTER_ADDR
    (first host of the step's or job's node list, where task 0 runs), MASTER_PORT (from the job
    id), LOCAL_RANK (SLURM_LOCALID), RANK (SLURM_PROCID), WORLD_SIZE (SLURM_NTASKS). Only the
    ones missing from `environ` are returned; {} outside Slurm or under torchrun (WORLD_SIZE set)."""
    if "WORLD_SIZE" in environ or "SLURM_NTASKS" not in environ:
        return {}
    derived: dict[str, str] = {}
    nodelist = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST")
    if "MASTER_ADDR" not in environ and nodelist:
        derived["MASTER_ADDR"] = expand_nodelist(nodelist)[0]
    if "MASTER_PORT" not in environ and environ.get("SLURM_JOB_ID", "").isdigit():
        derived["MASTER_PORT"] = str(SLURM_PORT_BASE + int(environ["SLURM_JOB_ID"]) % SLURM_PORT_SPAN)
    for target, source in (("LOCAL_RANK", "SLURM_LOCALID"), ("RANK", "SLURM_PROCID"), ("WORLD_SIZE", "SLURM_NTASKS")):
        if target not in environ and source in environ:
            derived[target] = environ[source]
    return derived


def init_distributed(
    layout: ParallelLayout = ParallelLayout(),
    *,
    rank: int | None = None,
    world_size: int | None = None,
    backend: str | None = None,
) -> None:
    """Initialise torch.distributed (from torchrun/Slurm env vars unless given) and Megatron's
    model-parallel groups. Safe to call once per process."""
    from megatron.core import parallel_state

    if not dist.is_initialized():
        if rank is None and world_size is None:
            for key, value in slurm_rendezvous_env(os.environ).items():
                os.environ.setdefault(key, value)
        rank = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", 0))) if rank is None else rank
        world_size = (
            int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", 1)))
            if world_size is None
            else world_size
        )
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29500")
        backend = backend or default_backend()
        if backend == "nccl":
            # modulo: with one GPU per task (srun --gpus-per-task=1) every task sees device 0
            device = int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count()
            torch.cuda.set_device(device)
            if "LOCAL_RANK" in os.environ:
                os.environ["LOCAL_RANK"] = str(device)  # what vLLM's external launcher reads
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    layout.data_parallel(dist.get_world_size())  # validates divisibility with a clear message
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=layout.tensor_parallel,
            pipeline_model_parallel_size=layout.pipeline_parallel,
            virtual_pipeline_model_parallel_size=layout.virtual_pipeline,
        )


def destroy_distributed() -> None:
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


SIGNAL_GRACE_SECONDS = 60.0
"""After a SIGTERM (or a first Ctrl-C) of the main process, the ranks get SIGTERM and this long to
finish (the trainer saves a checkpoint and stops) before they are killed."""


class SpawnTerminated(RuntimeError):
    """The main process was asked to stop (SIGTERM, Ctrl-C) before the ranks returned."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


def _spawned_worker(rank, world_size, port, layout, fn, args, queue, quiet, parent_pid=None):
    import traceback

    lead_own_group()  # before anything can start a process: all of them join this rank's group
    if parent_pid is not None:
        die_with_parent(parent_pid)
    if quiet:
        from policy_split_megatron.console import quiet_third_party

        quiet_third_party()

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    try:
        init_distributed(layout, rank=rank, world_size=world_size, backend="gloo")
        # Plain pickle to bytes: torch's queue reductions would share tensors through file
        # descriptors that die with this process before the parent reads them.
        queue.put((rank, True, pickle.dumps(fn(rank, world_size, *args))))
    except BaseException as err:  # noqa: BLE001 - the traceback is the caller's error message
        user_message = one_line(err) if is_user_error(err) else None
        queue.put((rank, False, (traceback.format_exc(), user_message)))
    finally:
        try:
            destroy_distributed()
        except Exception:  # noqa: BLE001
            pass


@contextmanager
def _stop_requests(procs):
    """While the ranks run: a SIGTERM or the first Ctrl-C of the main process is passed on to the
    ranks as SIGTERM (the trainer checkpoints and stops; other commands end); a second Ctrl-C
    raises KeyboardInterrupt. Yields a dict holding the first signal and its time."""
    state: dict = {"signum": None, "since": None}
    if threading.current_thread() is not threading.main_thread():
        yield state
        return

    def forward(signum, frame):  # noqa: ARG001
        if signum == signal.SIGINT and state["signum"] is not None:
            raise KeyboardInterrupt
        if state["signum"] is None:
            state["signum"], state["since"] = signum, time.monotonic()
        for p in procs:
            if p.pid is not None and p.exitcode is None:
                try:
                    os.kill(p.pid, signal.SIGTERM)
                except OSError:
                    pass

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield state
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _collect(procs, queue, timeout: float, stop: dict) -> tuple[dict, tuple | None]:
    """Results by rank, and the first failure: ("error", rank, (traceback, user message)),
    ("died", rank, exitcode), ("timeout",) or ("stopped", signum)."""
    results: dict[int, object] = {}
    deadline = time.monotonic() + timeout
    world_size = len(procs)
    while len(results) < world_size:
        try:
            rank, ok, payload = queue.get(timeout=0.5)
        except queue_module.Empty:
            dead = [r for r, p in enumerate(procs) if r not in results and p.exitcode is not None]
            if dead:
                # A rank that put its result (or error) just before exiting: drain what it sent.
                try:
                    rank, ok, payload = queue.get(timeout=2.0)
                except queue_module.Empty:
                    return results, ("died", dead[0], procs[dead[0]].exitcode)
            elif stop["signum"] is not None and time.monotonic() - stop["since"] > SIGNAL_GRACE_SECONDS:
                return results, ("stopped", stop["signum"])
            elif time.monotonic() > deadline:
                return results, ("timeout",)
            else:
                continue
        if not ok:
            return results, ("error", rank, payload)  # the others may wait in a collective: stop now
        results[rank] = pickle.loads(payload)
    return results, None


def spawn_local(
    fn, world_size: int, layout: ParallelLayout, *args, timeout: float = 600, quiet: bool = False
) -> list:
    """Run fn(rank, world_size, *args) in `world_size` fresh CPU processes joined by gloo, with
    Megatron's parallel state initialised to `layout`; return each rank's result (picklable).
    Fresh interpreters keep Megatron's global parallel state from leaking between calls. `fn` must
    be importable (module-level). `quiet` silences third-party warnings in the workers (console
    commands). `timeout`: seconds for all ranks to return.

    Failures: a user error in a rank (errors.is_user_error) is raised here as RankUserError with the
    rank's message; any other exception as RuntimeError carrying the first failing rank's
    traceback; a rank that dies without a word (OOM kill) as RuntimeError naming its signal.
    SIGTERM/Ctrl-C of this process are passed on to the ranks (`_stop_requests`); if they have not
    returned within SIGNAL_GRACE_SECONDS, SpawnTerminated. Whatever happens, the ranks and every
    process they started are gone when this returns or raises, and also when this process is
    killed outright (process_tree.py)."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=_spawned_worker, args=(r, world_size, port, layout, fn, args, queue, quiet, os.getpid()))
        for r in range(world_size)
    ]
    watchdog = Watchdog()
    failure, stop = None, {"signum": None}
    try:
        with _stop_requests(procs) as stop:
            for p in procs:
                p.start()
                watchdog.watch(p.pid)  # the rank's pid is its process group's id (lead_own_group)
            results, failure = _collect(procs, queue, timeout, stop)
            if failure is None:
                for p in procs:  # they have returned their results: let them exit on their own
                    p.join(timeout=30)
    finally:
        for p in procs:
            if p.pid is not None:
                kill_group(p.pid)  # the rank, if still there, and everything it started
                p.join(timeout=10)
                watchdog.forget(p.pid)
        watchdog.close()
    if failure is None:
        return [results[r] for r in range(world_size)]
    kind = failure[0]
    if stop["signum"] is not None and kind in ("died", "stopped"):
        raise SpawnTerminated(stop["signum"])  # what was asked for; not a failure of the ranks
    if kind == "error":
        rank, (trace, user_message) = failure[1], failure[2]
        if user_message is not None:
            raise RankUserError(user_message, trace)
        raise RuntimeError(f"rank {rank} failed:\n{trace}")
    if kind == "died":
        raise RuntimeError(f"rank {failure[1]} ended with {describe_exit(failure[2])} before returning a result")
    raise RuntimeError(f"the ranks did not return within {timeout:.0f} s")
