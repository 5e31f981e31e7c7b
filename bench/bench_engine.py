"""megatron-core's engine on this machine: what the distributed optimizer saves, what packing buys,
and what a Policy Split step costs next to a GRPO step. Not a test: it prints ratios against a
baseline run in the same process (or the same script) and Markdown tables for the README.

    .venv/bin/python bench/bench_engine.py optimizer   # optimizer-state bytes and peak RSS per rank, DP=1,2,4
    .venv/bin/python bench/bench_engine.py packing     # training tokens/s, packed vs padded, 2 length mixes
    .venv/bin/python bench/bench_engine.py steps       # Policy Split / GRPO step time per phase, embedded default
    .venv/bin/python bench/bench_engine.py all

optimizer: a Qwen3-shaped model of ~55M parameters in bf16 with the distributed optimizer; per rank,
the bytes of the optimizer's fp32 main parameters and Adam moments (the tensors megatron-core's
optimizer holds) after one step, and the peak resident memory of the rank (ru_maxrss), at DP=1, 2 and
4 (one process per rank, gloo). Target: DP=2 <= 0.55x of DP=1.

packing: one optimizer step (forward + backward + step) of a 27M-parameter model on a batch, the
rows either packed into THD micro-batches by token budget (the engine) or padded to the longest row
of their micro-batch with rows x longest <= the same budget (the layout before the engine: padding
tokens are computed like real ones). Tokens/s counts real tokens only; best of 2 after a warm-up.
The model is wide and shallow so that per-token work outweighs attention, as in real LLMs.
Mixes: the embedded Countdown task's row lengths (prompt + response of the embedded default), and a
long tail, lengths log-uniform in [64, 4096]. Target: packed >= 1.3x padded on the long tail.

steps: the embedded default's RL phase for Policy Split (4 normal + 4 HE responses per prompt) and
GRPO (8 normal) at the same generation budget, from one shared warm start; the mean time of each
phase (rollout, log-probs, train, sync) over steps 2..N, as logged in metrics.jsonl.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from policy_split_megatron.distributed import ParallelLayout, spawn_local  # noqa: E402


# -- optimizer state -------------------------------------------------------------------------------

def _optimizer_rank(rank, world_size, folder):
    from tests.helpers.engine import batch, build_engine, response_mask, train

    engine = build_engine(folder, params_dtype=torch.bfloat16, total_steps=1)
    ids, lens = batch(engine.arch.vocab_size, seed=0, lengths=[256] * 4)
    train(engine, ids, lens, response_mask(lens, ids.shape[1]), steps=1, token_budget=1024)
    state_bytes = 0
    for inner in engine.optimizer.chained_optimizers:
        adam = inner.optimizer
        seen = set()
        for group in adam.param_groups:
            for param in group["params"]:  # the fp32 main parameters (this rank's shard)
                state_bytes += param.numel() * param.element_size()
                seen.add(id(param))
        for param, state in adam.state.items():
            state_bytes += sum(t.numel() * t.element_size() for t in state.values()
                               if torch.is_tensor(t) and t.numel() > 1)
    params = sum(p.numel() for p in engine.module.parameters())
    return state_bytes, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, params


def bench_optimizer(tmp: Path) -> str:
    from policy_split_megatron.model.tiny import save_random_hf_model

    folder = str(save_random_hf_model("qwen3", tmp / "opt_model", seed=0, hidden_size=512, intermediate_size=1536,
                                      num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4,
                                      head_dim=64, vocab_size=32000))
    rows = []
    for dp in (1, 2, 4):
        results = spawn_local(_optimizer_rank, dp, ParallelLayout(1, 1), folder, timeout=1800, quiet=True)
        state = max(r[0] for r in results)
        rss = max(r[1] for r in results)
        rows.append((dp, state, rss, results[0][2]))
    base_state, base_rss = rows[0][1], rows[0][2]
    lines = [f"model: {rows[0][3] / 1e6:.1f}M parameters, bf16, distributed optimizer (fp32 main params + Adam)", "",
             "| DP | optimizer state / rank (MiB) | vs DP=1 | bytes / param / rank | peak RSS / rank (MiB) | vs DP=1 |",
             "|---|---|---|---|---|---|"]
    for dp, state, rss, params in rows:
        lines.append(f"| {dp} | {state / 2**20:.1f} | {state / base_state:.3f} | {state / params:.2f} | "
                     f"{rss / 2**20:.0f} | {rss / base_rss:.2f} |")
    return "\n".join(lines)


# -- packing ----------------------------------------------------------------------------------------

def _padded_packs(ids, lengths, budget):
    """The layout before the engine: consecutive rows, rows x longest <= budget, every row padded to
    the longest of its micro-batch (as one packed sequence per padded row: the same compute)."""
    from policy_split_megatron.engine.packing import build_pack

    groups, current, longest = [], [], 0
    for row, length in enumerate(lengths.tolist()):
        if current and (len(current) + 1) * max(longest, length) > budget:
            groups.append(current)
            current, longest = [], 0
        current.append(row)
        longest = max(longest, length)
    groups.append(current)
    packs = []
    for rows in groups:
        width = max(int(lengths[r]) for r in rows)
        padded_lengths = lengths.clone()
        padded_lengths[rows] = width
        packs.append(build_pack(ids, padded_lengths, rows))
    return packs


def _packing_rank(rank, world_size, folder, mixes, budget, repeats):
    from policy_split_megatron.engine import pack_batch
    from tests.helpers.engine import build_engine, nll, response_mask

    engine = build_engine(folder, total_steps=100)
    out = {}
    for name, lengths in mixes.items():
        lengths = torch.tensor(lengths)
        ids = torch.randint(1, engine.arch.vocab_size, (len(lengths), int(lengths.max())),
                            generator=torch.Generator().manual_seed(0))
        mask = response_mask(lengths, ids.shape[1], prompt=8)
        layouts = {"packed": pack_batch(ids, lengths, budget), "padded": _padded_packs(ids, lengths, budget)}
        real = int(lengths.sum())
        for layout, packs in layouts.items():
            computed = sum(p.num_tokens for p in packs)
            engine.train_step(packs, nll(mask), step_index=0)  # warm-up
            best = math.inf
            for _ in range(repeats):
                start = time.perf_counter()
                engine.train_step(packs, nll(mask), step_index=0)
                best = min(best, time.perf_counter() - start)
            out[(name, layout)] = (real / best, 1 - real / computed, len(packs))
    return out


def _embedded_lengths(rows: int) -> list[int]:
    """Row lengths of the embedded default: prompts of 40-60 tokens (char tokenizer; measured mean 48.5
    in its rollouts) plus responses of 4-24 tokens (rollout.*.max_tokens=24)."""
    rng = random.Random(0)
    return [rng.randint(40, 60) + rng.randint(4, 24) for _ in range(rows)]


def bench_packing(tmp: Path) -> str:
    from policy_split_megatron.model.tiny import save_random_hf_model

    # Wide and shallow, so that per-token matmuls outweigh attention as in a real LLM (Qwen3-8B:
    # 24 h^2 = 400M flops per token and layer against 4 L h = 67M for attention at L = 4096);
    # here 24 h^2 = 14M against 2.5M at the long tail's mean length.
    hidden, layers, vocab = 768, 2, 8192
    folder = str(save_random_hf_model("qwen3", tmp / "pack_model", seed=0, hidden_size=hidden,
                                      intermediate_size=2048, num_hidden_layers=layers, num_attention_heads=12,
                                      num_key_value_heads=4, head_dim=64, vocab_size=vocab,
                                      max_position_embeddings=8192))
    rng = random.Random(0)
    mixes = {"embedded task (44-84 tokens)": _embedded_lengths(256),
             "long tail (64-4096, log-uniform)": [int(math.exp(rng.uniform(math.log(64), math.log(4096))))
                                                  for _ in range(24)]}
    budget = 8192
    result = spawn_local(_packing_rank, 1, ParallelLayout(1, 1), folder, mixes, budget, 2, timeout=3600, quiet=True)[0]
    params = layers * (4 * hidden * hidden + 3 * hidden * 2048) + 2 * vocab * hidden
    lines = [f"one training step (forward, backward, optimizer), {budget}-token micro-batch budget, "
             f"{params / 1e6:.0f}M-parameter Qwen3 shape (hidden {hidden}, {layers} layers), best of 2 after a warm-up",
             "", "| lengths | layout | micro-batches | padding fraction | real tokens/s | packed / padded |",
             "|---|---|---|---|---|---|"]
    for name in mixes:
        padded = result[(name, "padded")][0]
        for layout in ("padded", "packed"):
            speed, waste, count = result[(name, layout)]
            ratio = f"{speed / padded:.2f}x" if layout == "packed" else "1.00x"
            lines.append(f"| {name} | {layout} | {count} | {waste:.1%} | {speed:,.0f} | {ratio} |")
    return "\n".join(lines)


# -- Policy Split vs GRPO step time ------------------------------------------------------------------

def _cli(args: list[str], log: Path) -> None:
    with open(log, "w") as handle:
        code = subprocess.call([sys.executable, "-m", "policy_split_megatron.cli", *args], stdout=handle,
                               stderr=subprocess.STDOUT, cwd=ROOT)
    if code:
        sys.exit(f"{' '.join(args)} failed ({code}); see {log}")


def bench_steps(tmp: Path, steps: int) -> str:
    base = tmp / "steps_base"
    _cli(["run", f"logging.dir={base}", "train.steps=0"], tmp / "base.log")
    runs = {"policy_split": [], "grpo": ["algorithm.name=grpo", "rollout.n_normal=8", "rollout.n_explore=0"]}
    phases = ["time/rollout", "time/logprob", "time/train", "time/sync"]
    means = {}
    for name, extra in runs.items():
        out = tmp / f"steps_{name}"
        _cli(["train", f"logging.dir={out}", f"model.hf_path={base / 'hf'}", "warm_start.steps=0",
              f"train.steps={steps}", "checkpoint.every_steps=0", "checkpoint.export_hf=False", *extra],
             tmp / f"{name}.log")
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        rl = [r for r in rows if r.get("phase") == "rl"][1:]  # step 1 warms caches up
        means[name] = {p: sum(r[p] for r in rl) / len(rl) for p in phases}
        means[name]["total"] = sum(means[name][p] for p in phases)
    lines = [f"embedded default, one shared warm start, steps 2..{steps} (mean seconds per step)", "",
             "| phase | Policy Split (4 + 4) | GRPO (8) | Policy Split / GRPO |", "|---|---|---|---|"]
    for phase in phases + ["total"]:
        ps, grpo = means["policy_split"][phase], means["grpo"][phase]
        lines.append(f"| {phase.split('/')[-1]} | {ps:.3f} | {grpo:.3f} | {ps / grpo:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["optimizer", "packing", "steps", "all"], nargs="?", default="all")
    parser.add_argument("--steps", type=int, default=8, help="RL steps per algorithm (steps)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_engine_") as tmp:
        tmp = Path(tmp)
        if args.what in ("optimizer", "all"):
            print(bench_optimizer(tmp), "\n", flush=True)
        if args.what in ("packing", "all"):
            print(bench_packing(tmp), "\n", flush=True)
        if args.what in ("steps", "all"):
            print(bench_steps(tmp, args.steps), "\n", flush=True)


if __name__ == "__main__":
    main()
