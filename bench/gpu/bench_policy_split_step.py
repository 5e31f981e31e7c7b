"""Benchmark (GPU): Policy Split RL steps with the colocated CUDA vLLM engine, phase by phase.

    python bench/gpu/bench_policy_split_step.py [--model qwen3-0.6b] [--steps 3] [--sleep-level 2]
        [--fp8 none|tensorwise|blockwise|...] [--prompts 16] [--kv-cache-gib 8] [--json out.json]
        [--set section.field=value ...]

One process, one GPU, a one-rank NCCL world: the trainer's own Session (Megatron policy, BF16
parameters, optional FP8; the in-process vLLM engine with sleep mode) and the trainer's own step
functions, in the order of trainer/run.py, with the GPU cycle of docs/gpu.md:

  rollout   generate_scored: dual-mode generation of --prompts Countdown prompts (n_normal +
            n_explore samples each), rewards;
  (sleep)   engine.sleep(): the engine hands its weights (level 1: to host, level 2: dropped) and
            KV cache back;
  logprob   prepare_step: pi_old log-probs and entropies of every quarter row, advantages;
  train     policy_update: the algorithm's loss, backward, optimizer step;
  sync      engine.refit(): wake weights, bucketed weight sync from GPU memory (TE FP8 caches
            dropped first, FP8 parameters dequantized), wake the KV cache.

The model is a randomly initialised HF folder of --model's shape (nothing downloaded) with the
char tokenizer of the embedded task (vocabulary 101, so the LM head is small and the sync bytes
are the transformer's). After one warm-up step, --steps steps are timed (wall clock after
torch.cuda.synchronize()). Sync time is compared with a device-to-device copy of the same number
of bytes (the memory-bandwidth floor of moving them once). Target: sync within 3x of that floor.
A phase that raises is reported with its error and the benchmark stops there.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_common import MODELS, copy_floor_seconds, fmt_gib, require_cuda  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=sorted(MODELS), default="qwen3-0.6b")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--sleep-level", type=int, choices=(1, 2), default=2)
    p.add_argument("--fp8", default="none", help="none, or an FP8 recipe (tensorwise, delayed, blockwise, mxfp8)")
    p.add_argument("--fp8-param", action="store_true")
    p.add_argument("--prompts", type=int, default=16, help="prompts per step")
    p.add_argument("--max-tokens", type=int, default=256, help="response length limit")
    p.add_argument("--kv-cache-gib", type=float, default=8.0)
    p.add_argument("--bucket-mib", type=int, default=512)
    p.add_argument("--dir", default=None, help="run directory (default: a temporary one)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra run-config overrides")
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def write_model(name: str, folder: Path) -> Path:
    """A random HF model of MODELS[name]'s transformer shape with the embedded char tokenizer."""
    from policy_split_megatron.tasks.tiny_model import write_tiny_model

    spec = {k: v for k, v in MODELS[name].items() if k not in ("family", "vocab_size")}
    if not (folder / "config.json").exists():
        write_tiny_model(folder, seed=0, **spec)
    return folder


def main(argv=None) -> int:
    args = parse_args(argv)
    require_cuda("bench_policy_split_step")
    import torch
    import torch.distributed as dist

    from policy_split_megatron.config import load_run_config
    from policy_split_megatron.distributed import ParallelLayout, init_distributed
    from policy_split_megatron.trainer.session import Session, generate_scored
    from policy_split_megatron.trainer.step import prepare_step
    from policy_split_megatron.trainer.update import policy_update

    run_dir = Path(args.dir or tempfile.mkdtemp(prefix="ps_bench_"))
    folder = write_model(args.model, run_dir / "model_bench")
    overrides = [
        f"model.hf_path={folder}", "model.params_dtype=bfloat16", f"logging.dir={run_dir}",
        "logging.tensorboard=False", "checkpoint.every_steps=0", f"data.prompts_per_step={args.prompts}",
        f"rollout.sleep_level={args.sleep_level}", "rollout.enable_sleep_mode=True",
        f"rollout.kv_cache_bytes={int(args.kv_cache_gib * 2**30)}",
        f"rollout.weight_sync_bucket_bytes={args.bucket_mib << 20}",
        f"rollout.normal.max_tokens={args.max_tokens}", f"rollout.explore.max_tokens={args.max_tokens}",
    ]
    if args.fp8 != "none":
        overrides += ["model.precision.fp8=hybrid", f"model.precision.fp8_recipe={args.fp8}",
                      f"model.precision.fp8_param={args.fp8_param}"]
    overrides += list(args.set)
    config = load_run_config(None, overrides)
    init_distributed(ParallelLayout())
    session = Session.open(config)
    policy, arch, engine = session.policy, session.arch, session.engine
    model = policy.modules
    n_params = sum(p.numel() for m in model for p in m.parameters())
    session.build_rl_optimizer()

    phases: dict[str, list[float]] = {k: [] for k in ("rollout", "sleep", "logprob", "train", "sync")}
    syncs, failure = [], None

    def timed(name, fn):
        torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        torch.cuda.synchronize()
        phases[name].append(time.perf_counter() - start)
        return result

    try:
        engine.refit(model, arch)  # the engine starts with placeholder weights; also computes the export plan
        for step in range(args.steps + 1):
            records = session.sampler.next_batch()
            prompts, samples, _ = timed("rollout", lambda: generate_scored(session, records, step=step))
            timed("sleep", engine.sleep)
            prepared = timed("logprob", lambda: prepare_step(
                policy, config.algorithm, prompts, samples, pad_token_id=session.pad_token_id,
                token_budget=config.train.micro_batch_tokens, num_prompts=len(records),
                mini_batches=config.train.mini_batches))
            timed("train", lambda: policy_update(
                policy, prepared.update, config.algorithm, epochs=config.train.ppo_epochs,
                mini_batches=config.train.mini_batches, micro_batch_tokens=config.train.micro_batch_tokens,
                step=step, generator=torch.Generator(device=policy.device).manual_seed(step)))
            syncs.append(timed("sync", lambda: engine.refit(model, arch)))
            if step == 0:  # warm-up step: compilation, CUDA graphs, allocator growth
                for values in phases.values():
                    values.clear()
                syncs.clear()
    except Exception:  # noqa: BLE001 - report how far the GPU path got
        failure = traceback.format_exc()

    peak = torch.cuda.max_memory_allocated()
    device = torch.cuda.get_device_name()
    precision = "bf16" if args.fp8 == "none" else f"fp8 {args.fp8}" + (" +fp8_param" if args.fp8_param else "")
    print(f"{device}, torch {torch.__version__}: model {args.model} shape ({n_params / 1e9:.2f}B params, random, "
          f"{precision}), {args.prompts} prompts x ({config.rollout.n_normal}+{config.rollout.n_explore}) samples, "
          f"sleep level {args.sleep_level}, {args.steps} timed steps")
    result = dict(device=device, args=vars(args), failure=failure)
    if phases["sync"]:
        med = {k: statistics.median(v) for k, v in phases.items()}
        total = sum(med.values())
        nbytes = syncs[-1].bytes
        floor = copy_floor_seconds(nbytes)
        sync_s = med["sync"]
        export_s = statistics.median(s.export_seconds for s in syncs)
        print(f"{'phase':<10}{'median s':>10}{'share':>8}")
        for k, v in med.items():
            print(f"{k:<10}{v:>10.3f}{v / total:>8.1%}")
        print(f"sync: {nbytes / 2**20:.0f} MiB in {syncs[-1].buckets} buckets, {sync_s * 1e3:.1f} ms "
              f"(export {export_s * 1e3:.1f} ms); device copy of the same bytes {floor * 1e3:.2f} ms "
              f"({2 * nbytes / floor / 1e12:.2f} TB/s read+write) -> sync / copy floor = {sync_s / floor:.1f}x "
              f"(target <= 3x: {'met' if sync_s / floor <= 3 else 'NOT met'})")
        print(f"peak allocated by torch (Megatron side): {fmt_gib(peak)} GiB")
        result.update(phases=med, sync_bytes=nbytes, copy_floor_s=floor, sync_over_floor=sync_s / floor,
                      export_s=export_s, peak_bytes=peak)
    if failure:
        print(f"FAILED after {sum(len(v) for v in phases.values())} timed phases:\n{failure}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=str))
    session.close()
    dist.destroy_process_group()
    return 1 if failure else 0


if __name__ == "__main__":
    sys.exit(main())
