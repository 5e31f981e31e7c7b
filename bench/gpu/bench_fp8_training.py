"""Benchmark (GPU): FP8 training vs BF16 on the same ~1B model and batch, in one process.

    python bench/gpu/bench_fp8_training.py [--model llama-1b|qwen2.5-1.5b] [--batch 8] [--seq 2048]
        [--steps 10] [--warmup 3] [--recipes tensorwise,delayed,blockwise,mxfp8] [--fp8-param]
        [--peak-tflops F] [--json out.json]

One Megatron policy per variant, built with the Transformer Engine spec and BF16 parameters, all
loaded with the SAME random weights (drawn once by the BF16 model, moved through the bridge's HF
export/import like a checkpoint). Variants: BF16 (the baseline), then every FP8 recipe this GPU
supports (the others are listed with the hardware check's reason), optionally each with
fp8_param. Per variant:

  step time   median over --steps (after --warmup) of one training step: forward, the RL loss
              (vocab-parallel log-probs + entropy of the BF16 logits, advantage-weighted), backward,
              fused AdamW on the parameters; CUDA events.
  tokens/s    batch x seq / step time.
  MFU         model FLOPs (training_flops: GEMMs + causal attention, 3x forward) / time / the
              device's dense BF16 peak (and, for FP8 rows, / the FP8 peak).
  peak mem    torch.cuda.max_memory_allocated over the timed steps (model, grads, AdamW state,
              activations).
  dlogp       per-token |log p_FP8 - log p_BF16| on the same evaluation batch before training
              (mean, p99, max), and the mean entropy for scale.

Ratios against BF16 from the same process: target FP8 step time <= 0.8x BF16.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_common import (  # noqa: E402
    CudaTimer,
    device_peaks,
    fmt_gib,
    hf_config,
    init_one_rank_world,
    MODELS,
    require_cuda,
    training_flops,
)

ALL_RECIPES = ("tensorwise", "delayed", "blockwise", "mxfp8")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=sorted(MODELS), default="llama-1b")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=2048, help="sequence length (a multiple of 32 for every recipe)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--recipes", default=",".join(ALL_RECIPES))
    p.add_argument("--fp8-format", choices=("hybrid", "e4m3"), default="hybrid")
    p.add_argument("--fp8-param", action="store_true", help="also run each recipe with fp8_param=True")
    p.add_argument("--chunk-size", type=int, default=4096, help="tokens per chunk of the log-prob op")
    p.add_argument("--peak-tflops", type=float, default=None, help="BF16 peak to use for MFU (FP8 = 2x)")
    p.add_argument("--json", default=None, help="also write the rows here")
    args = p.parse_args(argv)
    if args.seq % 32:
        p.error("--seq must be a multiple of 32 (FP8 GEMM alignment; mxfp8 needs 32)")
    return args


def _loss(model, arch, ids, adv, chunk_size):
    from policy_split_megatron.model import forward_logits
    from policy_split_megatron.ops import logprobs_and_entropy

    logits = forward_logits(model, ids, arch)
    logp, entropy = logprobs_and_entropy(logits[:, :-1], ids[:, 1:], vocab_size=arch.vocab_size,
                                         chunk_size=chunk_size)
    return -(logp * adv).mean() - 1e-3 * entropy.mean()


def _eval_logp(model, arch, ids, chunk_size):
    import torch

    from policy_split_megatron.model import forward_logits
    from policy_split_megatron.ops import logprobs_and_entropy

    with torch.no_grad():
        logits = forward_logits(model, ids, arch)
        return logprobs_and_entropy(logits[:, :-1], ids[:, 1:], vocab_size=arch.vocab_size, chunk_size=chunk_size)


def run_variant(name, arch, weights, precision, args, ids, adv, eval_ids):
    import torch

    from policy_split_megatron.bridge import load_hf_weights
    from policy_split_megatron.model import build_policy_model

    gc.collect()
    torch.cuda.empty_cache()
    model = build_policy_model(arch, params_dtype=torch.bfloat16, precision=precision)
    load_hf_weights(model, arch, weights)
    logp, entropy = _eval_logp(model, arch, eval_ids, args.chunk_size)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6, fused=True)
    timer = CudaTimer()
    torch.cuda.reset_peak_memory_stats()
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            torch.cuda.reset_peak_memory_stats()
        ctx = timer if step >= args.warmup else _Null()
        with ctx:
            optimizer.zero_grad(set_to_none=True)
            _loss(model, arch, ids, adv, args.chunk_size).backward()
            optimizer.step()
    row = dict(name=name, step_s=timer.median, peak_bytes=torch.cuda.max_memory_allocated(),
               logp=logp.float().cpu(), entropy=entropy.float().mean().item())
    del model, optimizer
    gc.collect()
    torch.cuda.empty_cache()
    return row


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def main(argv=None) -> int:
    args = parse_args(argv)
    require_cuda("bench_fp8_training")
    import torch

    from policy_split_megatron.bridge import export_hf_weights
    from policy_split_megatron.model import architecture_from_hf, build_policy_model
    from policy_split_megatron.model.precision import (
        PrecisionConfig,
        UnsupportedPrecisionError,
        check_hardware_support,
    )

    init_one_rank_world()
    torch.manual_seed(0)
    arch = architecture_from_hf(hf_config(args.model))
    donor = build_policy_model(arch, params_dtype=torch.bfloat16)
    weights = {k: v.clone() for k, v in export_hf_weights(donor, arch)}
    n_params = sum(p.numel() for p in donor.parameters())
    del donor
    gen = torch.Generator(device="cuda").manual_seed(1)
    ids = torch.randint(0, arch.vocab_size, (args.batch, args.seq), device="cuda", generator=gen)
    adv = torch.randn(args.batch, 1, device="cuda", generator=gen)
    eval_ids = torch.randint(0, arch.vocab_size, (max(1, args.batch // 2), args.seq), device="cuda", generator=gen)

    variants, skipped = [("bf16", None)], []
    for recipe in [r for r in args.recipes.split(",") if r]:
        for fp8_param in ((False, True) if args.fp8_param else (False,)):
            precision = PrecisionConfig(fp8=args.fp8_format, fp8_recipe=recipe, fp8_param=fp8_param)
            label = f"fp8 {recipe}" + (" +fp8_param" if fp8_param else "")
            try:
                check_hardware_support(precision)
            except UnsupportedPrecisionError as err:
                skipped.append((label, str(err)))
                continue
            variants.append((label, precision))

    rows = []
    for name, precision in variants:
        try:
            rows.append(run_variant(name, arch, weights, precision, args, ids, adv, eval_ids))
        except Exception as err:  # noqa: BLE001 - one failing recipe must not hide the others
            skipped.append((name, f"{type(err).__name__}: {err}"))
    tokens = args.batch * args.seq
    flops = training_flops(arch, tokens, args.seq)
    device, peak_bf16, peak_fp8 = device_peaks(args.peak_tflops)
    base = next(r for r in rows if r["name"] == "bf16")
    print(f"{device}, torch {torch.__version__}, model {args.model} ({n_params / 1e9:.2f}B params, random weights), "
          f"batch {args.batch} x seq {args.seq} = {tokens} tokens/step, {flops / 1e12:.1f} TFLOP/step, "
          f"peaks bf16 {peak_bf16:.0f} / fp8 {peak_fp8:.0f} TFLOP/s")
    header = (f"{'variant':<28}{'step s':>9}{'tokens/s':>11}{'MFU bf16':>9}{'MFU fp8':>9}{'peak GiB':>10}"
              f"{'time/bf16':>10}{'mem/bf16':>9}{'|dlogp| mean':>13}{'p99':>9}{'max':>9}{'H mean':>8}")
    print(header)
    print("-" * len(header))
    out = []
    for r in rows:
        delta = (r["logp"] - base["logp"]).abs().flatten()
        tflops = flops / r["step_s"] / 1e12
        row = dict(name=r["name"], step_s=r["step_s"], tokens_per_s=tokens / r["step_s"],
                   mfu_bf16=tflops / peak_bf16 if peak_bf16 else float("nan"),
                   mfu_fp8=tflops / peak_fp8 if peak_fp8 and r["name"] != "bf16" else float("nan"),
                   peak_gib=r["peak_bytes"] / 2**30, time_ratio=r["step_s"] / base["step_s"],
                   mem_ratio=r["peak_bytes"] / base["peak_bytes"], dlogp_mean=delta.mean().item(),
                   dlogp_p99=delta.quantile(0.99).item() if delta.numel() < 2**24 else float("nan"),
                   dlogp_max=delta.max().item(), entropy=r["entropy"])
        out.append(row)
        print(f"{row['name']:<28}{row['step_s']:>9.3f}{row['tokens_per_s']:>11.0f}{row['mfu_bf16']:>9.3f}"
              f"{row['mfu_fp8']:>9.3f}{fmt_gib(r['peak_bytes']):>10}{row['time_ratio']:>10.2f}{row['mem_ratio']:>9.2f}"
              f"{row['dlogp_mean']:>13.2e}{row['dlogp_p99']:>9.2e}{row['dlogp_max']:>9.2e}{row['entropy']:>8.2f}",
              flush=True)
    for name, reason in skipped:
        print(f"skipped {name}: {reason}")
    fp8_rows = [r for r in out if r["name"] != "bf16"]
    if fp8_rows:
        best = min(fp8_rows, key=lambda r: r["time_ratio"])
        verdict = "met" if best["time_ratio"] <= 0.8 else "NOT met"
        print(f"target FP8 step <= 0.8x BF16: {verdict} (best {best['name']}: {best['time_ratio']:.2f}x)")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(device=device, args=vars(args), rows=out, skipped=skipped),
                                              indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
