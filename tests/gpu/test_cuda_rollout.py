"""The colocated vLLM engine on CUDA (run on the device machine; skipped without CUDA or vLLM).

One process, one GPU, a one-rank NCCL world: the Megatron policy (BF16; FP8 variants when this GPU
and Transformer Engine support them) and an in-process CUDA vLLM engine built with sleep mode.
For each sleep level:

* `refit` (wake weights -> bucketed sync from GPU memory -> wake KV cache) makes the engine's
  prompt log-probs match Megatron's (BF16 tolerance; FP8 models: the engine runs BF16 GEMMs on the
  dequantized weights, so within FP8 activation rounding);
* `sleep` really hands device memory back (free memory grows by at least the KV cache) and a
  level-2 sleep makes the engine refuse to generate until the next sync;
* after a weight change and a refit the engine follows the new weights;
* dual-mode generation returns the configured samples per mode;
* the sync's time is reported against a device-to-device copy of the same bytes (the floor).
"""

from __future__ import annotations

import pytest
import torch

from tests.gpu.gpu_helpers import fp8_unsupported_reason, run_on_gpu
from tests.helpers.tokenizers import CharTokenizer

MiB = 1 << 20
KV_CACHE = 256 * MiB




@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from policy_split_megatron.model.tiny import save_random_hf_model

    return str(save_random_hf_model("qwen2", tmp_path_factory.mktemp("cuda_rollout") / "qwen2", seed=6))


def _megatron_logprobs(model, arch, ids):
    from policy_split_megatron.model import forward_logits
    from policy_split_megatron.ops import logprobs_and_entropy

    with torch.no_grad():
        logits = forward_logits(model, ids, arch)
        return logprobs_and_entropy(logits[:, :-1], ids[:, 1:], vocab_size=arch.vocab_size)[0].float().cpu()


def _copy_floor_seconds(nbytes: int, repeats: int = 10) -> float:
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda").random_(0, 255)
    dst = torch.empty_like(src)
    dst.copy_(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(repeats):
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return sorted(times)[len(times) // 2]


def _scenario(folder: str, sleep_level: int, precision_kwargs: dict | None) -> dict:
    from transformers import AutoConfig

    from policy_split_megatron.bridge import SafetensorsSource, load_hf_weights
    from policy_split_megatron.model import architecture_from_hf, build_policy_model
    from policy_split_megatron.model.precision import PrecisionConfig
    from policy_split_megatron.rollout import (
        EngineStateError,
        RolloutConfig,
        SamplingConfig,
        VLLMRolloutEngine,
        build_dual_mode_prompts,
    )

    arch = architecture_from_hf(AutoConfig.from_pretrained(folder))
    precision = PrecisionConfig(**precision_kwargs) if precision_kwargs else None
    model = build_policy_model(arch, params_dtype=torch.bfloat16, precision=precision)
    source = {k: v.cuda() for k, v in SafetensorsSource(folder).items()}
    load_hf_weights(model, arch, source)
    config = RolloutConfig(
        model_path=folder, dtype="bfloat16", max_model_len=256, n_normal=2, n_explore=3,
        he_system_prompt="Think differently.", gpu_memory_utilization=0.3, kv_cache_bytes=KV_CACHE,
        enable_sleep_mode=True, sleep_level=sleep_level, weight_sync_bucket_bytes=MiB,
        normal=SamplingConfig(temperature=1.0, max_tokens=16, seed=1),
        explore=SamplingConfig(temperature=1.0, max_tokens=16, seed=2),
    )
    engine = VLLMRolloutEngine(config)
    engine.start()
    report = {}
    try:
        seqs = torch.randint(0, arch.vocab_size, (3, 32), generator=torch.Generator().manual_seed(7))
        first = engine.refit(model, arch)
        engine_lp = torch.tensor(engine.prompt_logprobs(seqs.tolist()))
        megatron_lp = _megatron_logprobs(model, arch, seqs.cuda())
        report["diff_first"] = (engine_lp - megatron_lp).abs().mean().item()

        torch.cuda.synchronize()
        free_awake = torch.cuda.mem_get_info()[0]
        engine.sleep()
        torch.cuda.synchronize()
        report["released_bytes"] = torch.cuda.mem_get_info()[0] - free_awake
        refused = []
        engine.wake_up(tags=["weights", "kv_cache"])
        try:
            engine.generate([], step=0)
        except EngineStateError as err:
            refused.append(str(err).split(":")[0])
        report["refused_after_level2"] = refused
        engine.sleep()

        # "training": new weights, then the cycle's refit
        noisy = {k: v + 0.05 * v.abs().mean() * torch.randn_like(v) for k, v in source.items()}
        load_hf_weights(model, arch, noisy)
        second = engine.refit(model, arch)
        after = torch.tensor(engine.prompt_logprobs(seqs.tolist()))
        report["diff_second"] = (after - _megatron_logprobs(model, arch, seqs.cuda())).abs().mean().item()
        report["change"] = (after - engine_lp).abs().mean().item()

        prompts, _ = build_dual_mode_prompts(CharTokenizer(), ["What is 2+3?", "Name a prime."], config)
        result = engine.generate(prompts, step=1)
        report["samples"] = dict(result.metrics.samples)
        report["sync"] = (first, second)
        report["copy_floor_s"] = _copy_floor_seconds(second.bytes)
    finally:
        engine.shutdown()
    return report


VARIANTS = [
    pytest.param(1, None, id="bf16-sleep1"),
    pytest.param(2, None, id="bf16-sleep2"),
    pytest.param(2, dict(fp8="hybrid", fp8_recipe="tensorwise"), id="fp8-tensorwise-sleep2"),
    pytest.param(2, dict(fp8="hybrid", fp8_recipe="blockwise", fp8_param=True), id="fp8param-blockwise-sleep2"),
]


@pytest.mark.parametrize("sleep_level, precision_kwargs", VARIANTS)
def test_colocated_cuda_engine(folder, sleep_level, precision_kwargs):
    pytest.importorskip("vllm")
    if precision_kwargs:
        pytest.importorskip("transformer_engine")
        reason = fp8_unsupported_reason(precision_kwargs["fp8_recipe"])
        if reason:
            pytest.skip(reason)
    r = run_on_gpu(_scenario, folder, sleep_level, precision_kwargs, timeout=900)
    tol = 0.05 if precision_kwargs else 0.02  # mean |dlogp|: BF16 kernels differ; FP8 adds activation rounding
    assert r["diff_first"] <= tol, r
    assert r["diff_second"] <= tol, r
    assert r["change"] > 5 * tol, f"the engine did not follow the new weights: {r}"
    assert r["released_bytes"] >= KV_CACHE * 0.9, f"sleep released only {r['released_bytes'] / MiB:.0f} MiB"
    if sleep_level == 2:
        assert r["refused_after_level2"] == ["the engine's weights were dropped by a level-2 sleep"]
    assert r["samples"] == {"normal": 4, "high_entropy": 6}, r["samples"]
    first, second = r["sync"]
    assert second.plan_cached and second.bytes == first.bytes
    print(f"sync {second.bytes / MiB:.1f} MiB in {second.seconds * 1e3:.2f} ms "
          f"({second.seconds / r['copy_floor_s']:.1f}x a device copy of the same bytes)")
