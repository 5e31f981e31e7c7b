"""Benchmark: vocab-parallel log-prob + entropy, ours vs gathering the vocab vs Megatron's CE.

    .venv/bin/python bench/bench_vocab_parallel.py [--tokens 4096] [--vocab 32768]
        [--dtype fp32|bf16] [--chunk-size 512] [--repeats 3]

Spawns TP = 2 gloo processes (one thread each: this targets a 2-core CPU machine) and measures, for
one forward + backward of loss = logp.sum() + H.sum() on a [tokens, vocab / 2] shard per rank:

  ours        `logprobs_and_entropy`, unchunked and with --chunk-size;
  (a)         all_gather of the shards (torch.distributed.nn.functional.all_gather, differentiable;
              on gloo its backward is an all-to-all + sum, i.e. it SUMS the identical per-rank
              losses, so that variant's loss is scaled by 1/TP to get the true gradient), then
              log_softmax and entropy on the full vocab;
  (a')        the same with a Megatron-style gather whose backward just keeps the local slice
              (megatron-core's gather_from_tensor_model_parallel_region allocates on CUDA, so it is
              re-implemented here): the cheapest honest "gather the vocab" baseline;
  (b)         megatron.core.tensor_parallel.vocab_parallel_cross_entropy (log p = -CE; for fp32
              input it works in place, so it gets a clone, which is counted) plus a plain autograd
              vocab-parallel entropy (global max, all-reduced sums via Megatron's
              reduce_from_tensor_model_parallel_region).

Time: median over --repeats of the wall time of forward + backward, between barriers, on rank 0.

Memory, two honest measures of the EXTRA memory a variant needs on top of its input shard:
  peak alloc  exact allocator accounting: the run is repeated under torch.profiler with
              profile_memory=True, which reports every CPU tensor (de)allocation with the running
              "Total Allocated"; the peak minus the value before the first event is the high-water
              mark of tensor memory allocated by the variant (outputs, temporaries, saved tensors,
              the gradient). gloo's internal scratch memory is not tensor memory and is not counted.
  peak RSS    the process's resident-set high-water mark (VmHWM, reset through /proc/self/clear_refs
              after gc + malloc_trim) minus its resident size before the run: includes allocator
              overheads and gloo buffers, but is subject to page-granularity and malloc caching.
Ratios (time and peak alloc) are each row divided by (a) and by (b). "err" is the max-normalised
difference of logp, H and a slice of the gradient from ours (unchunked): it checks the baselines
compute the same thing. Peak memory is the max over ranks.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist

TP = 2
GRAD_ROWS = 64  # rows of the gradient kept to cross-check the variants


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--vocab", type=int, default=32768, help="full vocabulary (split over TP=2)")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--chunk-size", type=int, default=512, help="tokens per chunk, 'ours chunked'")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    if args.vocab % TP:
        p.error(f"--vocab must be divisible by TP={TP}")
    return args


# ----------------------------------------------------------------------------------- variants


@dataclass
class Variant:
    name: str
    fn: Callable[[torch.Tensor, torch.Tensor, object], tuple[torch.Tensor, torch.Tensor]]
    loss_scale: float = 1.0


def _ours(chunk_size: int | None):
    def fn(x, target, group):
        from policy_split_megatron.ops import logprobs_and_entropy

        return logprobs_and_entropy(x, target, tp_group=group, chunk_size=chunk_size)

    return fn


def _full_vocab(full: torch.Tensor, target: torch.Tensor):
    logp_all = torch.log_softmax(full.float(), dim=-1)
    logp = logp_all.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    return logp, -(logp_all.exp() * logp_all).sum(-1)


def _gather_torch_nn(x, target, group):
    from torch.distributed.nn.functional import all_gather

    return _full_vocab(torch.cat(all_gather(x, group=group), dim=-1), target)


class _GatherSplitBackward(torch.autograd.Function):
    """all_gather along the last dim; backward keeps the local slice (Megatron's semantics)."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group, ctx.rank = group, dist.get_rank(group)
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x.contiguous(), group=group)
        ctx.width = x.shape[-1]
        return torch.cat(parts, dim=-1)

    @staticmethod
    def backward(ctx, grad):
        lo = ctx.rank * ctx.width
        return grad[..., lo:lo + ctx.width].contiguous(), None


def _gather_split_backward(x, target, group):
    return _full_vocab(_GatherSplitBackward.apply(x, group), target)


def _megatron_ce_plus_entropy(x, target, group):
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy
    from megatron.core.tensor_parallel.mappings import reduce_from_tensor_model_parallel_region

    # Megatron's CE upcasts with .float() and then works in place: a no-op upcast for fp32 would
    # overwrite the logits the entropy still needs.
    ce_input = x.clone() if x.dtype == torch.float32 else x
    logp = -vocab_parallel_cross_entropy(ce_input, target)

    z = x.float()
    with torch.no_grad():
        row_max = z.amax(dim=-1)
        dist.all_reduce(row_max, op=dist.ReduceOp.MAX, group=group)
    shifted = z - row_max.unsqueeze(-1)
    e = shifted.exp()
    sum_exp = reduce_from_tensor_model_parallel_region(e.sum(-1), group)
    sum_e_shifted = reduce_from_tensor_model_parallel_region((e * shifted).sum(-1), group)
    return logp, sum_exp.log() - sum_e_shifted / sum_exp


def variants(chunk_size: int) -> list[Variant]:
    return [
        Variant("ours (unchunked)", _ours(None)),
        Variant(f"ours (chunk={chunk_size})", _ours(chunk_size)),
        Variant("(a) all_gather [torch.distributed.nn]", _gather_torch_nn, loss_scale=1.0 / TP),
        Variant("(a') all_gather, split backward", _gather_split_backward),
        Variant("(b) megatron CE + entropy", _megatron_ce_plus_entropy),
    ]


# -------------------------------------------------------------------------------- measuring


def _step(variant: Variant, logits: torch.Tensor, target: torch.Tensor, group):
    x = logits.detach().requires_grad_()
    logp, entropy = variant.fn(x, target, group)
    ((logp.sum() + entropy.sum()) * variant.loss_scale).backward()
    return logp.detach(), entropy.detach(), x.grad


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _release_memory() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _step_with_peak_rss(variant, logits, target, group):
    """One step; returns its outputs and the RSS high-water mark it added (MiB), None if the
    kernel does not let this process reset VmHWM."""
    _release_memory()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        before = _status_kib("VmRSS")
    except OSError:
        before = None
    out = _step(variant, logits, target, group)
    return out, None if before is None else (_status_kib("VmHWM") - before) / 1024


@contextlib.contextmanager
def _quiet_stderr():
    """Kineto logs every profiler start/stop on fd 2 from C++; keep the table readable."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _peak_alloc_mib(variant, logits, target, group) -> float:
    from torch.profiler import ProfilerActivity, profile

    _release_memory()
    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = _step(variant, logits, target, group)
        del out
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        prof.export_chrome_trace(f.name)
        with open(f.name) as trace:
            events = json.load(trace)["traceEvents"]
    mem = sorted((e for e in events if e.get("name") == "[memory]"), key=lambda e: e["ts"])
    if not mem:
        return 0.0
    base = mem[0]["args"]["Total Allocated"] - mem[0]["args"]["Bytes"]
    return (max(e["args"]["Total Allocated"] for e in mem) - base) / 2**20


def _time_s(variant, logits, target, group, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        _release_memory()
        dist.barrier(group)
        t0 = time.perf_counter()
        out = _step(variant, logits, target, group)
        dist.barrier(group)
        times.append(time.perf_counter() - t0)
        del out
    return statistics.median(times)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def _worker(rank: int, world_size: int, port: int, args: argparse.Namespace) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")
    warnings.filterwarnings("ignore", message=".*all_gather is deprecated", category=FutureWarning)
    from megatron.core import parallel_state

    from policy_split_megatron.distributed import (
        ParallelLayout,
        destroy_distributed,
        init_distributed,
    )

    layout = ParallelLayout(tensor_parallel=TP)
    init_distributed(layout, rank=rank, world_size=world_size, backend="gloo")
    try:
        group = parallel_state.get_tensor_model_parallel_group()
        dtype = torch.float32 if args.dtype == "fp32" else torch.bfloat16
        shard = args.vocab // TP
        own, shared = torch.Generator().manual_seed(rank), torch.Generator().manual_seed(99)
        logits = (torch.randn(args.tokens, shard, generator=own) * 2).to(dtype)
        target = torch.randint(0, args.vocab, (args.tokens,), generator=shared)

        rows, reference = [], None
        for v in variants(args.chunk_size):
            # The first step is the warm-up, the RSS measurement and the cross-check.
            (logp, entropy, grad), rss = _step_with_peak_rss(v, logits, target, group)
            sample = (logp, entropy, grad[:GRAD_ROWS].float().clone())
            del grad
            reference = sample if reference is None else reference
            err = max(_rel(a, b) for a, b in zip(sample, reference))
            alloc = _peak_alloc_mib(v, logits, target, group)
            rows.append(dict(name=v.name, time=_time_s(v, logits, target, group, args.repeats),
                             alloc=alloc, rss=rss, err=err))
        gathered = [None] * world_size
        dist.all_gather_object(gathered, rows)
        if rank == 0:
            _print_table(args, gathered, logits)
    finally:
        destroy_distributed()


def _print_table(args, per_rank: list[list[dict]], logits: torch.Tensor) -> None:
    rows = []
    for i, row in enumerate(per_rank[0]):
        others = [r[i] for r in per_rank]
        rss = [r["rss"] for r in others]
        rows.append(dict(row, alloc=max(r["alloc"] for r in others),
                         rss=None if None in rss else max(rss), err=max(r["err"] for r in others)))
    a = next(r for r in rows if r["name"].startswith("(a)"))
    b = next(r for r in rows if r["name"].startswith("(b)"))
    shard_mib = logits.numel() * logits.element_size() / 2**20
    print(f"tokens={args.tokens} vocab={args.vocab} TP={TP} "
          f"shard=[{args.tokens}, {args.vocab // TP}] "
          f"{args.dtype} ({shard_mib:.0f} MiB/rank), repeats={args.repeats}, 1 thread/rank, "
          f"torch {torch.__version__}")
    header = (f"{'variant':<40}{'fwd+bwd s':>10}{'peak alloc MiB':>16}{'peak RSS MiB':>14}"
              f"{'time/(a)':>10}{'time/(b)':>10}{'mem/(a)':>9}{'mem/(b)':>9}{'err':>10}")
    print(header)
    print("-" * len(header))
    for r in rows:
        rss = "n/a" if r["rss"] is None else f"{r['rss']:.0f}"
        print(f"{r['name']:<40}{r['time']:>10.3f}{r['alloc']:>16.0f}{rss:>14}"
              f"{r['time'] / a['time']:>10.2f}{r['time'] / b['time']:>10.2f}"
              f"{r['alloc'] / a['alloc']:>9.2f}{r['alloc'] / b['alloc']:>9.2f}{r['err']:>10.1e}",
              flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print("$ " + shlex.join([sys.executable, *sys.orig_argv[1:]]), flush=True)
    import torch.multiprocessing as mp

    from policy_split_megatron.distributed import free_port

    mp.start_processes(_worker, args=(TP, free_port(), args), nprocs=TP, start_method="spawn")
    return 0


if __name__ == "__main__":
    sys.exit(main())
