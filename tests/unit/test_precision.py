"""FP8 precision config (model/precision.py) and the CUDA/FP8 additions around it, on CPU.

What runs here: value validation; the mapping onto a REAL megatron-core TransformerConfig (it can
be constructed with FP8 fields on CPU; only building TE modules needs CUDA); the builder's path
with CUDA pretended (FP8 fields reach the config, defaults unchanged without FP8) and its refusal
of FP8 on a machine without CUDA; the hardware check's messages with the GPU, CUDA and
Transformer Engine probes replaced; FP8 parameter export (dequantization), TE cache clearing in
the weight sync and the engine's refit order with stand-ins for the TE and vLLM objects; and the
vocab-parallel op on BF16 logits of a realistic vocabulary against a float64 reference (FP32
accumulation). The same paths on a real GPU: tests/gpu/test_fp8_precision.py.
"""

from __future__ import annotations

import dataclasses
import sys
import types

import pytest
import torch

from policy_split_megatron.model import precision as prec
from policy_split_megatron.model.precision import (
    FP8_RECIPES,
    PrecisionConfig,
    UnsupportedPrecisionError,
    check_hardware_support,
    refresh_fp8_weight_caches,
    transformer_config_kwargs,
)

FP8_FIELDS = ("fp8", "fp8_recipe", "fp8_param", "fp8_margin", "fp8_amax_history_len", "fp8_amax_compute_algo",
              "fp8_wgrad", "first_last_layers_bf16", "num_layers_at_start_in_bf16", "num_layers_at_end_in_bf16")


# ----------------------------------------------------------------------------------- values


def test_default_is_no_fp8_and_maps_to_nothing():
    p = PrecisionConfig()
    assert not p.enabled and p.sequence_alignment == 1
    assert transformer_config_kwargs(p) == {} and transformer_config_kwargs(None) == {}


@pytest.mark.parametrize("spelled", ["none", "None", "", "off", None])
def test_none_spellings_mean_no_fp8(spelled):
    assert PrecisionConfig(fp8=spelled).fp8 is None


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(fp8="e5m2"), r"model\.precision\.fp8 must be None or one of"),
        (dict(fp8="hybrid", fp8_recipe="custom"), r"fp8_recipe must be one of .*'custom' recipe is not supported"),
        (dict(fp8="hybrid", fp8_recipe="nvfp4"), r"fp8_recipe"),
        (dict(fp8_param=True), r"fp8_param=True needs FP8"),
        (dict(first_last_layers_bf16=True), r"first_last_layers_bf16=True needs FP8"),
        (dict(fp8="hybrid", fp8_recipe="delayed", first_last_layers_bf16=True), r"does not work with fp8_recipe='delayed'"),
        (dict(fp8="hybrid", first_last_layers_bf16=True, num_layers_at_start_in_bf16=0, num_layers_at_end_in_bf16=0),
         r"keeps no layer in BF16"),
        (dict(fp8="hybrid", num_layers_at_start_in_bf16=-1), r"num_layers_at_start_in_bf16 must be an int >= 0"),
        (dict(fp8="hybrid", num_layers_at_end_in_bf16=1.5), r"num_layers_at_end_in_bf16 must be an int >= 0"),
        (dict(fp8="hybrid", fp8_margin=-2), r"fp8_margin must be an int >= 0"),
        (dict(fp8="hybrid", fp8_amax_history_len=0), r"fp8_amax_history_len must be an int >= 1"),
        (dict(fp8="hybrid", fp8_amax_compute_algo="mean"), r"fp8_amax_compute_algo must be one of"),
        (dict(fp8="hybrid", fp8_param="yes"), r"fp8_param must be a bool"),
        (dict(fp8="hybrid", fp8_wgrad=1), r"fp8_wgrad must be a bool"),
        (dict(fp8="hybrid", cache_fp8_weights=None), r"cache_fp8_weights must be a bool"),
    ],
)
def test_bad_values_name_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PrecisionConfig(**kwargs)


def test_sequence_alignment_follows_megatron():
    from megatron.core.enums import Fp8Recipe
    from megatron.core.fp8_utils import get_fp8_align_size

    for recipe in FP8_RECIPES:
        assert PrecisionConfig(fp8="hybrid", fp8_recipe=recipe).sequence_alignment == get_fp8_align_size(
            Fp8Recipe(recipe))


def test_check_layers():
    p = PrecisionConfig(fp8="hybrid", first_last_layers_bf16=True, num_layers_at_start_in_bf16=2,
                        num_layers_at_end_in_bf16=1)
    p.check_layers(4)  # 2 + 1 of 4: one FP8 layer left
    with pytest.raises(ValueError, match="no layer would run in FP8"):
        p.check_layers(3)
    with pytest.raises(ValueError, match="exceeds the 1 layers of one pipeline stage"):
        p.check_layers(4, pipeline_parallel=4)
    PrecisionConfig(fp8="hybrid").check_layers(1)  # without first_last_layers_bf16 nothing to check


def test_run_config_section():
    from policy_split_megatron.algorithms.config import config_from_dict
    from policy_split_megatron.config import ModelConfig

    assert ModelConfig().precision == PrecisionConfig()
    model = config_from_dict(ModelConfig, {"params_dtype": "bfloat16",
                                           "precision": {"fp8": "hybrid", "fp8_recipe": "blockwise"}})
    assert model.precision == PrecisionConfig(fp8="hybrid", fp8_recipe="blockwise")
    with pytest.raises(ValueError, match="unknown field"):
        config_from_dict(ModelConfig, {"precision": {"fp8_format": "hybrid"}})


# ----------------------------------------------------------------- mapping onto megatron-core

BASE = dict(num_layers=4, hidden_size=128, num_attention_heads=4, use_cpu_initialization=True)


@pytest.mark.parametrize("recipe", FP8_RECIPES)
@pytest.mark.parametrize("fp8", ["hybrid", "e4m3"])
def test_kwargs_build_a_real_transformer_config(recipe, fp8):
    from megatron.core.transformer.transformer_config import TransformerConfig

    p = PrecisionConfig(fp8=fp8, fp8_recipe=recipe, fp8_param=True, fp8_margin=1, fp8_amax_history_len=16,
                        fp8_amax_compute_algo="most_recent", fp8_wgrad=False,
                        first_last_layers_bf16=recipe != "delayed", num_layers_at_start_in_bf16=1,
                        num_layers_at_end_in_bf16=2)
    kwargs = transformer_config_kwargs(p)
    assert set(kwargs) == set(FP8_FIELDS) | {"disable_parameter_transpose_cache"}
    config = TransformerConfig(**BASE, **kwargs)
    for name in FP8_FIELDS:
        assert getattr(config, name) == getattr(p, name), name
    assert config.disable_parameter_transpose_cache is True  # cache_fp8_weights=False (default)


def test_first_last_layers_reach_megatron_layer_selection():
    from megatron.core.fp8_utils import is_first_last_bf16_layer
    from megatron.core.transformer.transformer_config import TransformerConfig

    p = PrecisionConfig(fp8="hybrid", first_last_layers_bf16=True, num_layers_at_start_in_bf16=1,
                        num_layers_at_end_in_bf16=2)
    config = TransformerConfig(**{**BASE, "num_layers": 6}, **transformer_config_kwargs(p))
    assert [is_first_last_bf16_layer(config, i) for i in range(6)] == [True, False, False, False, True, True]


def test_megatron_rejects_what_we_reject():
    """Our value checks are not stricter than needed: megatron-core refuses the same thing."""
    from megatron.core.transformer.transformer_config import TransformerConfig

    with pytest.raises(ValueError, match="Delayed scaling does not support"):
        TransformerConfig(**BASE, fp8="hybrid", fp8_recipe="delayed", first_last_layers_bf16=True)
    with pytest.raises(ValueError, match="fp8_param must be used together with fp8"):
        TransformerConfig(**BASE, fp8_param=True)


def test_cache_fp8_weights_maps_to_the_transpose_cache():
    kwargs = transformer_config_kwargs(PrecisionConfig(fp8="hybrid", cache_fp8_weights=True))
    assert kwargs["disable_parameter_transpose_cache"] is False


@pytest.fixture()
def tiny_arch():
    from policy_split_megatron.model import architecture_from_hf
    from policy_split_megatron.model.tiny import tiny_hf_config

    return architecture_from_hf(tiny_hf_config("qwen3"))


@pytest.fixture()
def pretend_cuda(monkeypatch):
    """The builder's view of the machine: CUDA present, TP = PP = 1 (no process group needed)."""
    from policy_split_megatron.model import builder

    monkeypatch.setattr(builder.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(builder.parallel_state, "get_tensor_model_parallel_world_size", lambda: 1)
    monkeypatch.setattr(builder.parallel_state, "get_pipeline_model_parallel_world_size", lambda: 1)
    return builder


def _simple_fields(config) -> dict:
    simple = (bool, int, float, str, type(None), torch.dtype)
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
            if isinstance(getattr(config, f.name), simple)}


def test_builder_threads_precision_into_the_config(pretend_cuda, tiny_arch):
    p = PrecisionConfig(fp8="hybrid", fp8_recipe="blockwise", first_last_layers_bf16=True)
    config = pretend_cuda.transformer_config(tiny_arch, params_dtype=torch.bfloat16, precision=p)
    assert (config.fp8, config.fp8_recipe, config.first_last_layers_bf16, config.bf16) == (
        "hybrid", "blockwise", True, True)
    assert config.use_cpu_initialization is False  # the CUDA path
    # Without FP8 the config is field for field what it was before precision existed.
    plain = _simple_fields(pretend_cuda.transformer_config(tiny_arch, params_dtype=torch.bfloat16))
    assert _simple_fields(pretend_cuda.transformer_config(tiny_arch, params_dtype=torch.bfloat16,
                                                          precision=PrecisionConfig())) == plain
    assert plain["fp8"] is None and plain["disable_parameter_transpose_cache"] is False
    with pytest.raises(ValueError, match="no layer would run in FP8"):
        pretend_cuda.transformer_config(tiny_arch, precision=PrecisionConfig(
            fp8="hybrid", first_last_layers_bf16=True, num_layers_at_start_in_bf16=2, num_layers_at_end_in_bf16=2))


def test_builder_refuses_fp8_on_cpu(tiny_arch):
    from policy_split_megatron.model.builder import build_policy_model, transformer_config

    assert not torch.cuda.is_available()
    fp8 = PrecisionConfig(fp8="hybrid")
    for call in (lambda: transformer_config(tiny_arch, precision=fp8),
                 lambda: transformer_config(tiny_arch, fp8="hybrid"),  # the raw override too
                 lambda: build_policy_model(tiny_arch, precision=fp8),
                 lambda: build_policy_model(tiny_arch, params_dtype=torch.bfloat16, fp8="e4m3")):
        with pytest.raises(UnsupportedPrecisionError, match="no CUDA device.*fp8=None"):
            call()


def test_builder_refuses_fp8_without_the_te_spec(pretend_cuda, tiny_arch, monkeypatch):
    monkeypatch.setattr(prec, "_cuda_available", lambda: True)
    monkeypatch.setattr(pretend_cuda, "check_hardware_support", lambda config: None)
    with pytest.raises(UnsupportedPrecisionError, match="use_transformer_engine=False was passed"):
        pretend_cuda.build_policy_model(tiny_arch, use_transformer_engine=False, precision=PrecisionConfig(fp8="hybrid"))


# ------------------------------------------------------------------------- hardware checks

H100 = ("NVIDIA H100 80GB HBM3", (9, 0))
L40S = ("NVIDIA L40S", (8, 9))
A100 = ("NVIDIA A100-SXM4-80GB", (8, 0))
B200 = ("NVIDIA B200", (10, 0))


@pytest.fixture()
def machine(monkeypatch):
    """Set the probed machine: machine(device, cuda, te, te_verdict=None)."""

    def set_machine(device=H100, cuda="13.0", te="2.9.0", verdict=None, has_cuda=True):
        monkeypatch.setattr(prec, "_cuda_available", lambda: has_cuda)
        monkeypatch.setattr(prec, "_device", lambda: device)
        monkeypatch.setattr(prec, "_cuda_version", lambda: cuda)
        monkeypatch.setattr(prec, "_te_version", lambda: te)
        monkeypatch.setattr(prec, "_te_support", lambda recipe: verdict)

    return set_machine


def test_no_fp8_checks_nothing(monkeypatch):
    def boom():
        raise AssertionError("probed the machine for a run without FP8")

    monkeypatch.setattr(prec, "_cuda_available", boom)
    assert check_hardware_support(None) is None
    assert check_hardware_support(PrecisionConfig()) is None


@pytest.mark.parametrize("recipe", ["tensorwise", "delayed", "blockwise"])
def test_hopper_runs_the_hopper_recipes(machine, recipe):
    machine(H100, cuda="13.0", te="2.9.0", verdict=(True, ""))
    found = check_hardware_support(PrecisionConfig(fp8="hybrid", fp8_recipe=recipe))
    assert found == prec.PrecisionSupport(H100[0], (9, 0), "13.0", "2.9.0", recipe)
    assert "compute capability 9.0" in found.describe()


@pytest.mark.parametrize(
    "device, cuda, te, recipe, messages",
    [
        (H100, "13.0", "2.9.0", "mxfp8", ["compute capability 9.0", "needs >= 10.0 (Blackwell)",
                                          "use fp8_recipe='blockwise' or 'tensorwise' on Hopper"]),
        (L40S, "12.8", "2.9.0", "blockwise", ["compute capability 8.9", ">= 9.0", "on Ada"]),
        (A100, "12.8", "2.9.0", "tensorwise", ["'NVIDIA A100-SXM4-80GB' has compute capability 8.0", ">= 8.9"]),
        (H100, "12.8", "2.9.0", "blockwise", ["built with CUDA 12.8; blockwise needs CUDA >= 12.9"]),
        (B200, "12.6", "2.9.0", "mxfp8", ["CUDA 12.6; mxfp8 needs CUDA >= 12.8"]),
        (H100, "13.0", None, "tensorwise", ["Transformer Engine is not installed"]),
        (H100, "13.0", "2.1.0", "tensorwise", ["Transformer Engine is 2.1.0", "tensorwise recipe only from TE >= 2.2.0"]),
        (H100, "13.0", "2.2.1", "blockwise", ["TE >= 2.3.0"]),
        (A100, "11.8", None, "delayed", ["compute capability 8.0", "CUDA 11.8", "not installed"]),  # all at once
        (H100, None, "2.9.0", "tensorwise", ["torch was built without CUDA"]),
    ],
)
def test_unsupported_machines_are_named(machine, device, cuda, te, recipe, messages):
    machine(device, cuda=cuda, te=te)
    with pytest.raises(UnsupportedPrecisionError) as err:
        check_hardware_support(PrecisionConfig(fp8="hybrid", fp8_recipe=recipe))
    text = str(err.value)
    assert text.startswith(f"model.precision.fp8='hybrid' with fp8_recipe={recipe!r} cannot run on this machine")
    for message in messages:
        assert message in text, (message, text)


def test_blackwell_runs_mxfp8(machine):
    machine(B200, cuda="13.0", te="2.9.0")
    assert check_hardware_support(PrecisionConfig(fp8="e4m3", fp8_recipe="mxfp8")).recipe == "mxfp8"


def test_no_cuda_is_named(machine):
    machine(has_cuda=False)
    with pytest.raises(UnsupportedPrecisionError, match="no CUDA device.*model.precision.fp8=None"):
        check_hardware_support(PrecisionConfig(fp8="hybrid"))


def test_transformer_engine_verdict_is_reported(machine):
    machine(H100, cuda="13.0", te="2.9.0", verdict=(False, "FP8 block scaled GEMM requires Hopper and CUDA >= 12.9."))
    with pytest.raises(UnsupportedPrecisionError, match="reports the blockwise recipe unsupported here: FP8 block"):
        check_hardware_support(PrecisionConfig(fp8="hybrid", fp8_recipe="blockwise"))


def test_te_probe_both_apis(monkeypatch):
    """TE 2.x `check_*_support() -> (ok, reason)` in .fp8; newer `is_*_available(return_reason=True)`."""
    old = types.ModuleType("transformer_engine.pytorch.fp8")
    old.check_fp8_support = lambda: (True, "")
    old.check_mxfp8_support = lambda: (False, "MXFP8 needs Blackwell")
    monkeypatch.setitem(sys.modules, "transformer_engine.pytorch.fp8", old)
    monkeypatch.setitem(sys.modules, "transformer_engine.pytorch.quantization", None)  # import -> ImportError
    assert prec._te_support("tensorwise") == (True, "")
    assert prec._te_support("mxfp8") == (False, "MXFP8 needs Blackwell")
    assert prec._te_support("blockwise") is None  # this "TE" has no probe for it

    new = types.ModuleType("transformer_engine.pytorch.quantization")
    new.is_fp8_block_scaling_available = lambda return_reason=False: (False, "needs CUDA 12.9") if return_reason else False
    monkeypatch.setitem(sys.modules, "transformer_engine.pytorch.quantization", new)
    assert prec._te_support("blockwise") == (False, "needs CUDA 12.9")


def test_te_version_probe_without_te():
    assert prec._te_version() is None  # Transformer Engine cannot be installed on the CPU machines


# ------------------------------------------------------- FP8 parameters, caches, engine refit


class FakeFloat8(torch.Tensor):
    """Stands in for a TE Float8Tensor: a tensor subclass whose values must be dequantized."""


def test_export_dequantizes_fp8_parameters(monkeypatch):
    import megatron.core.fp8_utils as fp8_utils

    from policy_split_megatron.bridge.convert import exportable

    plain = torch.nn.Parameter(torch.randn(4, 4, dtype=torch.bfloat16))
    out = exportable(plain)
    assert type(out) is torch.Tensor and out.data_ptr() == plain.data_ptr()  # no copy on the plain path

    quantized = torch.randn(4, 4).as_subclass(FakeFloat8)
    assert exportable(quantized) is not None and type(exportable(quantized)) is FakeFloat8  # not FP8 per megatron
    monkeypatch.setattr(fp8_utils, "is_float8tensor", lambda t: isinstance(t, FakeFloat8))
    monkeypatch.setattr(fp8_utils, "dequantize_fp8_tensor",
                        lambda t: t.as_subclass(torch.Tensor).to(torch.bfloat16) * 1)
    out = exportable(quantized)
    assert type(out) is torch.Tensor and out.dtype == torch.bfloat16
    assert torch.equal(out, quantized.as_subclass(torch.Tensor).to(torch.bfloat16))


class TEModuleStandIn(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(2, 2))
        self._fp8_workspaces = {"weight": torch.zeros(2, 2), "weight_t": torch.zeros(2, 2)}
        self.is_first_microbatch = False


def test_clear_fp8_caches_and_refresh():
    from policy_split_megatron.rollout.weight_sync import clear_fp8_caches

    model = torch.nn.Sequential(TEModuleStandIn(), torch.nn.Linear(2, 2), TEModuleStandIn())
    assert clear_fp8_caches(model) == 4 and all(not m._fp8_workspaces for m in (model[0], model[2]))
    assert clear_fp8_caches(model) == 0
    assert clear_fp8_caches(torch.nn.Linear(3, 3)) == 0  # a plain model: nothing to do
    assert refresh_fp8_weight_caches(model) == 2 and model[0].is_first_microbatch and model[2].is_first_microbatch


def test_weight_sync_drops_fp8_caches_before_exporting(monkeypatch):
    from policy_split_megatron.rollout import weight_sync

    model = torch.nn.Sequential(TEModuleStandIn())
    seen = []

    def fake_export(model_, arch, plan):
        seen.append(len(model_[0]._fp8_workspaces))  # what the export saw
        yield "w", torch.ones(2)

    monkeypatch.setattr(weight_sync, "export_plan", lambda model_, arch: ["plan"])
    monkeypatch.setattr(weight_sync, "export_hf_weights", fake_export)
    sync = weight_sync.WeightSync(1 << 20)
    metrics = sync.sync(model, "arch", lambda stream: list(stream))
    assert seen == [0] and sync.fp8_workspaces_cleared == 2 and metrics.tensors == 1
    model[0]._fp8_workspaces["weight"] = torch.zeros(1)
    keep = weight_sync.WeightSync(1 << 20, clear_fp8_caches=False)
    keep.sync(model, "arch", lambda stream: list(stream))
    assert seen[-1] == 1 and keep.fp8_workspaces_cleared == 0


class FakeLLM:
    def __init__(self, calls):
        self.calls = calls

    def sleep(self, level):
        self.calls.append(("sleep", level))

    def wake_up(self, tags):
        self.calls.append(("wake_up", tuple(tags)))

    def reset_prefix_cache(self):
        self.calls.append(("reset_prefix_cache",))


@pytest.mark.parametrize("on_cuda", [False, True], ids=["cpu", "cuda_sleep_mode"])
def test_engine_refit_wakes_weights_syncs_then_kv_cache(on_cuda):
    from policy_split_megatron.rollout import RolloutConfig, VLLMRolloutEngine
    from policy_split_megatron.rollout.types import SyncMetrics

    calls = []
    engine = VLLMRolloutEngine(RolloutConfig(model_path="unused", sleep_level=2))
    engine._llm, engine._on_cuda = FakeLLM(calls), on_cuda

    class Sync:
        def sync(self, model, arch, load):
            calls.append(("sync",))
            return SyncMetrics(bytes=1)

    engine._weight_sync = Sync()
    engine.sleep()
    with pytest.raises(Exception, match="asleep"):
        engine.generate([])
    metrics = engine.refit(torch.nn.Linear(1, 1), "arch")
    assert metrics.bytes == 1 and engine._awake == {"weights", "kv_cache"} and engine._weights_valid
    engine_calls = [("sync",), ("reset_prefix_cache",)]
    if on_cuda:  # sleep mode: the level from rollout.sleep_level, weights woken before the sync
        engine_calls = [("sleep", 2), ("wake_up", ("weights",))] + engine_calls + [("wake_up", ("kv_cache",))]
    assert calls == engine_calls


# --------------------------------------------------- BF16 logits of an FP8 model, FP32 accumulation


def test_bf16_logits_give_fp32_results_at_a_real_vocabulary():
    """An FP8 model's output layer is BF16: the op must upcast and accumulate in FP32. Summing 32k
    BF16 probabilities in BF16 would be off by ~1e-2; FP32 accumulation matches float64 to ~1e-6."""
    from policy_split_megatron.ops import logprobs_and_entropy

    tokens, vocab, real = 48, 32768, 32000  # Megatron-padded vocabulary, padding left out
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(tokens, vocab, generator=gen) * 4).to(torch.bfloat16)
    target = torch.randint(0, real, (tokens,), generator=gen)
    z = logits.clone().requires_grad_()
    logp, entropy = logprobs_and_entropy(z, target, temperature=0.9, chunk_size=16, vocab_size=real)
    (logp.sum() + entropy.sum()).backward()
    assert logp.dtype == entropy.dtype == torch.float32 and z.grad.dtype == torch.bfloat16

    ref = logits[:, :real].double().requires_grad_()
    ref_all = torch.log_softmax(ref / 0.9, dim=-1)
    ref_logp = ref_all.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    ref_entropy = -(ref_all.exp() * ref_all).sum(-1)
    (ref_logp.sum() + ref_entropy.sum()).backward()
    assert (logp.double() - ref_logp).abs().max().item() <= 1e-5 * ref_logp.abs().max().item()
    assert (entropy.double() - ref_entropy).abs().max().item() <= 1e-5 * ref_entropy.abs().max().item()
    grad_err = (z.grad[:, :real].double() - ref.grad).abs().max() / ref.grad.abs().max()
    assert grad_err.item() <= 1e-2  # the gradient is rounded to BF16, the logits' dtype
    assert (z.grad[:, real:] == 0).all()
