"""Benchmark (GPU): the vocab-parallel log-prob + entropy op on CUDA vs the naive full-vocab path.

    python bench/gpu/bench_vocab_parallel_cuda.py [--tokens 16384] [--vocab 151936]
        [--dtype bf16|fp32] [--chunk-size 4096] [--repeats 10] [--json out.json]

The CUDA counterpart of bench/bench_vocab_parallel.py, and the same code path: the variants are
that script's functions (imported, not copied), run on one GPU at TP = 1 in a one-rank NCCL world:

  ours          `logprobs_and_entropy`, unchunked and with --chunk-size;
  naive         the full-vocab path: fp32 `log_softmax` of the logits, gather, entropy
                -(p log p).sum() (bench_vocab_parallel._full_vocab), autograd backward;
  megatron      megatron-core's `vocab_parallel_cross_entropy` (log p = -CE) plus a separate
                autograd entropy pass (bench_vocab_parallel._megatron_ce_plus_entropy).

Inputs: BF16 logits [tokens, vocab] (what an FP8 or BF16 model's output layer gives; Qwen2.5's
151,936 vocabulary by default), random targets. One step = forward + backward of
logp.sum() + H.sum(). Time: median of --repeats by CUDA events after a warm-up. Memory: peak of
torch.cuda.max_memory_allocated during the step minus what was allocated before it (the logits),
i.e. outputs, gradient, saved tensors and temporaries. "err" is the max-normalised difference of
logp, H and the first gradient rows from ours (unchunked). A variant that runs out of memory is
reported as OOM (itself a result at this size).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))  # bench/: the CPU benchmark whose variants are reused
from gpu_common import CudaTimer, fmt_gib, init_one_rank_world, require_cuda  # noqa: E402

import bench_vocab_parallel as cpu_bench  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=16384)
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    p.add_argument("--chunk-size", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def variants(chunk_size: int) -> list:
    V = cpu_bench.Variant
    return [
        V("ours (unchunked)", cpu_bench._ours(None)),
        V(f"ours (chunk={chunk_size})", cpu_bench._ours(chunk_size)),
        V("naive full-vocab log_softmax + entropy", lambda x, target, group: cpu_bench._full_vocab(x, target)),
        V("megatron CE + entropy pass", cpu_bench._megatron_ce_plus_entropy),
    ]


def measure(variant, logits, target, group, repeats: int) -> dict:
    import torch

    gc.collect()
    torch.cuda.empty_cache()
    try:
        logp, entropy, grad = cpu_bench._step(variant, logits, target, group)  # warm-up and outputs
        sample = (logp, entropy, grad[: cpu_bench.GRAD_ROWS].float().clone())
        del logp, entropy, grad
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = cpu_bench._step(variant, logits, target, group)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        del out
        timer = CudaTimer()
        for _ in range(repeats):
            with timer:
                out = cpu_bench._step(variant, logits, target, group)
            del out
        return dict(name=variant.name, time=timer.median, peak=peak, sample=sample)
    except torch.cuda.OutOfMemoryError:
        return dict(name=variant.name, time=None, peak=None, sample=None)


def main(argv=None) -> int:
    args = parse_args(argv)
    require_cuda("bench_vocab_parallel_cuda")
    import torch
    from megatron.core import parallel_state

    init_one_rank_world()
    group = parallel_state.get_tensor_model_parallel_group()
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    gen = torch.Generator(device="cuda").manual_seed(0)
    logits = (torch.randn(args.tokens, args.vocab, device="cuda", generator=gen) * 2).to(dtype)
    target = torch.randint(0, args.vocab, (args.tokens,), device="cuda", generator=gen)
    rows = [measure(v, logits, target, group, args.repeats) for v in variants(args.chunk_size)]
    reference = rows[0]["sample"]
    naive = next(r for r in rows if r["name"].startswith("naive"))
    megatron = next(r for r in rows if r["name"].startswith("megatron"))
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}: logits [{args.tokens}, {args.vocab}] "
          f"{args.dtype} ({fmt_gib(logits.numel() * logits.element_size())} GiB), TP=1, repeats={args.repeats}")
    header = (f"{'variant':<42}{'fwd+bwd ms':>11}{'peak GiB':>10}{'time/naive':>11}{'time/mcore':>11}"
              f"{'mem/naive':>10}{'mem/mcore':>10}{'err':>10}")
    print(header)
    print("-" * len(header))

    def ratio(a, b):
        return f"{a / b:.2f}" if a is not None and b else "n/a"

    out = []
    for r in rows:
        if r["time"] is None:
            print(f"{r['name']:<42}{'OOM':>11}")
            out.append(dict(name=r["name"], oom=True))
            continue
        err = max(cpu_bench._rel(a, b) for a, b in zip(r["sample"], reference)) if reference else float("nan")
        print(f"{r['name']:<42}{r['time'] * 1e3:>11.1f}{fmt_gib(r['peak']):>10}"
              f"{ratio(r['time'], naive['time']):>11}{ratio(r['time'], megatron['time']):>11}"
              f"{ratio(r['peak'], naive['peak']):>10}{ratio(r['peak'], megatron['peak']):>10}{err:>10.1e}", flush=True)
        out.append(dict(name=r["name"], time_s=r["time"], peak_bytes=r["peak"], err=err))
    if args.json:
        Path(args.json).write_text(json.dumps(dict(device=torch.cuda.get_device_name(), args=vars(args), rows=out),
                                              indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
