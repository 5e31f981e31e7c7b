"""Shared pieces of the GPU benchmarks (bench/gpu/*.py): model shapes, timing, peaks, one-rank world.

Nothing here runs at import: every benchmark imports and parses on a CPU machine
(`python -m py_compile bench/gpu/*.py`), and only its main() needs CUDA.
"""

from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as `python bench/gpu/x.py` from anywhere
    sys.path.insert(0, str(ROOT))

# ~1B shapes (random weights: nothing is downloaded). Field names are transformers' config fields.
MODELS = {
    # Llama-3.2-1B: 1.24B parameters, tied embeddings
    "llama-1b": dict(family="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                     num_attention_heads=32, num_key_value_heads=8, head_dim=64, vocab_size=128256,
                     rope_theta=500000.0, tie_word_embeddings=True, max_position_embeddings=8192,
                     rms_norm_eps=1e-5),
    # Qwen2.5-1.5B: 1.54B parameters, tied embeddings, QKV bias
    "qwen2.5-1.5b": dict(family="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, head_dim=128, vocab_size=151936,
                         rope_theta=1000000.0, tie_word_embeddings=True, max_position_embeddings=32768,
                         rms_norm_eps=1e-6),
    # Qwen3-0.6B: 0.6B parameters, QK-norm (sync/rollout benchmark default: fits beside vLLM easily)
    "qwen3-0.6b": dict(family="qwen3", hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                       num_attention_heads=16, num_key_value_heads=8, head_dim=128, vocab_size=151936,
                       rope_theta=1000000.0, tie_word_embeddings=True, max_position_embeddings=40960,
                       rms_norm_eps=1e-6),
}

# Dense peak TFLOP/s by device name (vendor datasheets, SXM parts, no sparsity): (bf16, fp8).
# Leads, not measurements: pass --peak-tflops to use a measured matmul rate instead.
PEAKS = {
    "H100": (989.0, 1979.0),
    "H200": (989.0, 1979.0),
    "H800": (989.0, 1979.0),
    "B200": (2250.0, 4500.0),
    "GB200": (2500.0, 5000.0),
    "L40S": (362.0, 733.0),
    "L4": (121.0, 242.0),
    "A100": (312.0, 0.0),
}


def hf_config(name: str):
    """The transformers config of one of MODELS."""
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    spec = dict(MODELS[name])
    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config}[spec.pop("family")]
    if cls is LlamaConfig:
        spec["attention_bias"] = False
    return cls(**spec, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def device_peaks(override: float | None = None) -> tuple[str, float, float]:
    """(device name, bf16 peak TFLOP/s, fp8 peak TFLOP/s); 0 when unknown."""
    import torch

    name = torch.cuda.get_device_name()
    if override:
        return name, override, 2 * override
    short = name.replace("NVIDIA", "").strip()  # "H100 80GB HBM3", "A100-SXM4-80GB", ...
    for key in sorted(PEAKS, key=len, reverse=True):  # GB200 before B200, L40S before L4
        if short.startswith(key):
            return name, *PEAKS[key]
    return name, 0.0, 0.0


def training_flops(arch, tokens: int, seq_len: int) -> float:
    """Model FLOPs of one training step (forward + backward = 3x forward) over `tokens` tokens in
    sequences of `seq_len`: every GEMM (QKV, attention output, SwiGLU MLP, LM head) and causal
    attention's two S x S products (half of the full square)."""
    h, layers, ffn = arch.hidden_size, arch.num_layers, arch.ffn_hidden_size
    q = arch.num_attention_heads * arch.head_dim
    kv = arch.num_key_value_heads * arch.head_dim
    per_layer = h * (q + 2 * kv) + q * h + 3 * h * ffn
    gemm = 2 * tokens * (layers * per_layer + h * arch.vocab_size)
    attention = 2 * 2 * tokens * seq_len * q * layers * 0.5
    return 3.0 * (gemm + attention)


class CudaTimer:
    """Median wall time of a region on the current stream, by CUDA events."""

    def __init__(self):
        import torch

        self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        self.times: list[float] = []

    def __enter__(self):
        self.start.record()
        return self

    def __exit__(self, *exc):
        self.end.record()
        self.end.synchronize()
        self.times.append(self.start.elapsed_time(self.end) / 1e3)
        return False

    @property
    def median(self) -> float:
        return statistics.median(self.times) if self.times else float("nan")


def copy_floor_seconds(nbytes: int, repeats: int = 20) -> float:
    """Median time of a device-to-device copy of `nbytes` (reads + writes 2 x nbytes): the memory
    bandwidth floor of moving that many bytes once."""
    import torch

    src = torch.empty(max(nbytes, 1), dtype=torch.uint8, device="cuda").random_(0, 255)
    dst = torch.empty_like(src)
    dst.copy_(src)
    timer = CudaTimer()
    for _ in range(repeats):
        with timer:
            dst.copy_(src)
    del src, dst
    return timer.median


def init_one_rank_world() -> None:
    """A one-rank NCCL world and megatron-core's parallel state (TP = PP = 1)."""
    from policy_split_megatron.distributed import ParallelLayout, free_port, init_distributed

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    init_distributed(ParallelLayout(), rank=0, world_size=1, backend="nccl")


def require_cuda(what: str) -> None:
    import torch

    if not torch.cuda.is_available():
        raise SystemExit(f"{what} needs a CUDA GPU; run it on the GPU machine (scripts/gpu/run_gpu_checks.sh)")


def fmt_gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.2f}"
