"""Training precision of the Megatron policy: BF16/FP32, or FP8 through Transformer Engine.

`PrecisionConfig` is the `model.precision` section of a run. It is checked in two places:

* `__post_init__` checks the values alone (formats, recipes, counts): a bad value fails when the
  configuration is read, on any machine;
* `check_hardware_support(config)` checks that THIS machine can run the chosen recipe (a CUDA GPU
  of the right compute capability, the CUDA toolkit torch was built with, Transformer Engine's
  version, and TE's own support probes). Call it at start-up, before any model or engine is
  built; `build_policy_model` calls it again as a last line of defence.

`transformer_config_kwargs(precision)` maps the section onto megatron-core's `TransformerConfig`
(megatron-core >= 0.16: `fp8`, `fp8_recipe`, `fp8_param`, `first_last_layers_bf16`,
`num_layers_at_start_in_bf16`, `num_layers_at_end_in_bf16`, `fp8_margin`,
`fp8_amax_history_len`, `fp8_amax_compute_algo`, `fp8_wgrad`). With FP8 off it returns `{}`, so a
BF16/FP32 model's config is exactly what it was before this module existed.

What megatron-core then does with those fields (so nothing else here has to): the Transformer
Engine layer spec builds TE linears; `TransformerBlock` builds each layer under
`fp8_model_init` when `fp8_param` is set (GEMM weights stored as TE `Float8Tensor`s), and runs
each layer under `fp8_autocast` with the recipe (per layer for every recipe but `delayed`, which
wraps the whole block), leaving the first/last N layers outside it. Embedding, final norm and the
output layer are never FP8: the logits come out in the params dtype (BF16), and the vocab-parallel
log-prob/entropy op (`ops/vocab_parallel.py`) upcasts them and accumulates in FP32.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import Any

FP8_FORMATS = ("hybrid", "e4m3")
FP8_RECIPES = ("delayed", "tensorwise", "blockwise", "mxfp8")
AMAX_COMPUTE_ALGOS = ("most_recent", "max")


class UnsupportedPrecisionError(RuntimeError):
    """The configured precision cannot run on this machine (device, CUDA or Transformer Engine)."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check(ok: bool, name: str, rule: str, value: Any) -> None:
    if not ok:
        raise ValueError(f"model.precision.{name} must be {rule}, got {value!r}")


@dataclass
class PrecisionConfig:
    """FP8 training through Transformer Engine, or none (the default: the params dtype, FP32 or
    BF16, everywhere). The params dtype itself is `model.params_dtype`; FP8 is meant to run on
    top of `params_dtype=bfloat16` (FP8 GEMMs, everything else BF16)."""

    fp8: str | None = None
    """FP8 data format, None = no FP8. "hybrid": E4M3 for weights and activations in the forward,
    E5M2 (more range) for the activation gradients in the backward (the usual choice for
    training); "e4m3": E4M3 everywhere. Needs a CUDA GPU of compute capability >= 8.9 (Ada,
    Hopper, Blackwell) and Transformer Engine."""
    fp8_recipe: str = "tensorwise"
    """How FP8 scaling factors are chosen. "tensorwise": one scale per tensor from its current
    amax (TE Float8CurrentScaling; TE >= 2.2); "delayed": one scale per tensor from an amax
    history (TE DelayedScaling; cannot keep first/last layers in BF16); "blockwise": 1x128 /
    128x128 block scales, the DeepSeek-V3 recipe (TE >= 2.3, CUDA >= 12.9, Hopper); "mxfp8":
    MX block scaling with 32-element blocks (TE >= 2.1, CUDA >= 12.8, Blackwell, compute
    capability >= 10.0 only)."""
    fp8_param: bool = False
    """Keep the GEMM weights themselves in FP8 (TE Float8Tensor; megatron-core's
    `fp8_model_init`) instead of BF16 weights cast to FP8 at each forward: less memory. Weight
    export and the rollout sync dequantize them back to the params dtype (bridge/convert.py)."""
    first_last_layers_bf16: bool = False
    """Run the first `num_layers_at_start_in_bf16` and last `num_layers_at_end_in_bf16`
    transformer layers outside FP8 (they are the most sensitive to quantization). Not with the
    "delayed" recipe (its amax reduction spans the whole block)."""
    num_layers_at_start_in_bf16: int = 1
    """Layers at the start of the model kept in BF16 when `first_last_layers_bf16` (>= 0; at most
    the layers of one pipeline stage, and at least one layer must stay FP8)."""
    num_layers_at_end_in_bf16: int = 1
    """Layers at the end of the model kept in BF16 when `first_last_layers_bf16` (same rules)."""
    fp8_margin: int = 0
    """Scaling-factor margin: scales are divided by 2**margin, leaving headroom against overflow
    (>= 0; "delayed" recipe)."""
    fp8_amax_history_len: int = 1024
    """Length of the amax history of the "delayed" recipe (>= 1). 1024 with "max" is the
    conservative setting NeMo uses; megatron-core's own default is 1 with "most_recent"."""
    fp8_amax_compute_algo: str = "max"
    """Amax used for the "delayed" scale: "max" over the history or the "most_recent" value."""
    fp8_wgrad: bool = True
    """Compute the weight-gradient GEMM in FP8 too; False runs it in the params dtype (slower,
    sometimes more stable)."""
    cache_fp8_weights: bool = False
    """Let Transformer Engine keep each weight's FP8 copy between micro-batches (megatron-core's
    `disable_parameter_transpose_cache=False`). TE refreshes that copy only on a module whose
    `is_first_microbatch` flag was set again, which megatron-core's pipeline schedules do after
    every optimizer step but this project's training loop does not yet: with the cache on and no
    `refresh_fp8_weight_caches(model)` after each optimizer step, forwards would use stale FP8
    weights. Off (the default) re-quantizes the weights at every forward: always correct,
    costs one read of the weights per micro-batch."""

    def __post_init__(self) -> None:
        if isinstance(self.fp8, str) and self.fp8.lower() in ("", "none", "null", "off"):
            self.fp8 = None  # what a YAML or command-line "none" means
        _check(self.fp8 is None or self.fp8 in FP8_FORMATS, "fp8", f"None or one of {FP8_FORMATS}", self.fp8)
        _check(self.fp8_recipe in FP8_RECIPES, "fp8_recipe",
               f"one of {FP8_RECIPES} (megatron-core's 'custom' recipe is not supported here)", self.fp8_recipe)
        for name in ("fp8_param", "first_last_layers_bf16", "fp8_wgrad", "cache_fp8_weights"):
            value = getattr(self, name)
            _check(isinstance(value, bool), name, "a bool", value)
        for name in ("num_layers_at_start_in_bf16", "num_layers_at_end_in_bf16", "fp8_margin"):
            value = getattr(self, name)
            _check(_is_int(value) and value >= 0, name, "an int >= 0", value)
        _check(_is_int(self.fp8_amax_history_len) and self.fp8_amax_history_len >= 1, "fp8_amax_history_len",
               "an int >= 1", self.fp8_amax_history_len)
        _check(self.fp8_amax_compute_algo in AMAX_COMPUTE_ALGOS, "fp8_amax_compute_algo",
               f"one of {AMAX_COMPUTE_ALGOS}", self.fp8_amax_compute_algo)
        if self.fp8 is None:
            for name in ("fp8_param", "first_last_layers_bf16"):
                if getattr(self, name):
                    raise ValueError(f"model.precision.{name}=True needs FP8: set model.precision.fp8 "
                                     f"to one of {FP8_FORMATS}, or leave {name} False")
            return
        if self.first_last_layers_bf16:
            if self.fp8_recipe == "delayed":
                raise ValueError("model.precision.first_last_layers_bf16 does not work with fp8_recipe='delayed' "
                                 "(its amax reduction spans the whole block): use 'tensorwise' or 'blockwise'")
            if self.num_layers_at_start_in_bf16 + self.num_layers_at_end_in_bf16 == 0:
                raise ValueError("model.precision.first_last_layers_bf16=True keeps no layer in BF16: set "
                                 "num_layers_at_start_in_bf16 or num_layers_at_end_in_bf16 >= 1")

    @property
    def enabled(self) -> bool:
        """True when the model trains with FP8."""
        return self.fp8 is not None

    @property
    def sequence_alignment(self) -> int:
        """Token counts of an FP8 GEMM input must be multiples of this (megatron-core's
        `get_fp8_align_size`: 32 for mxfp8, 16 otherwise); 1 without FP8. Pad each micro-batch's
        sequence length to a multiple of it."""
        return fp8_sequence_alignment(self.fp8, self.fp8_recipe)

    def check_layers(self, num_layers: int, pipeline_parallel: int = 1) -> None:
        """The BF16 layer counts against the model: each at most the layers of one pipeline
        stage (megatron-core's rule) and at least one FP8 layer left."""
        if not (self.enabled and self.first_last_layers_bf16):
            return
        per_stage = num_layers // pipeline_parallel
        for name in ("num_layers_at_start_in_bf16", "num_layers_at_end_in_bf16"):
            value = getattr(self, name)
            if value > per_stage:
                raise ValueError(f"model.precision.{name}={value} exceeds the {per_stage} layers of one pipeline "
                                 f"stage ({num_layers} layers, PP={pipeline_parallel})")
        bf16 = self.num_layers_at_start_in_bf16 + self.num_layers_at_end_in_bf16
        if bf16 >= num_layers:
            raise ValueError(f"model.precision keeps {bf16} of the model's {num_layers} layers in BF16: no layer "
                             "would run in FP8; lower num_layers_at_start_in_bf16/num_layers_at_end_in_bf16 or "
                             "set fp8=None")


def fp8_sequence_alignment(fp8: str | None, fp8_recipe: str | None) -> int:
    """megatron-core's `get_fp8_align_size`: 32 for mxfp8, 16 for other FP8 recipes, 1 without FP8."""
    if not fp8:
        return 1
    return 32 if fp8_recipe == "mxfp8" else 16


def transformer_config_kwargs(precision: PrecisionConfig | None) -> dict[str, Any]:
    """The TransformerConfig fields of `precision`; `{}` without FP8 (megatron-core's defaults)."""
    if precision is None or not precision.enabled:
        return {}
    return dict(
        fp8=precision.fp8,
        fp8_recipe=precision.fp8_recipe,
        fp8_param=precision.fp8_param,
        fp8_margin=precision.fp8_margin,
        fp8_amax_history_len=precision.fp8_amax_history_len,
        fp8_amax_compute_algo=precision.fp8_amax_compute_algo,
        fp8_wgrad=precision.fp8_wgrad,
        first_last_layers_bf16=precision.first_last_layers_bf16,
        num_layers_at_start_in_bf16=precision.num_layers_at_start_in_bf16,
        num_layers_at_end_in_bf16=precision.num_layers_at_end_in_bf16,
        disable_parameter_transpose_cache=not precision.cache_fp8_weights,
    )


# ----------------------------------------------------------------------------- hardware checks


@dataclass(frozen=True)
class RecipeRequirement:
    """What a recipe needs from the machine."""

    min_capability: tuple[int, int]
    min_cuda: str
    min_te: str
    hardware: str  # how to say min_capability in words


REQUIREMENTS = {
    "delayed": RecipeRequirement((8, 9), "12.1", "2.1.0", "Ada, Hopper or Blackwell"),
    # megatron-core uses Float8CurrentScaling only from TE 2.2.0.dev0 on (fp8_utils.get_fp8_recipe)
    "tensorwise": RecipeRequirement((8, 9), "12.1", "2.2.0.dev0", "Ada, Hopper or Blackwell"),
    # Float8BlockScaling: TE 2.3.0.dev0 (megatron-core), CUDA 12.9 for the block-scaled GEMM (TE, verl, NeMo-RL)
    "blockwise": RecipeRequirement((9, 0), "12.9", "2.3.0.dev0", "Hopper or newer"),
    "mxfp8": RecipeRequirement((10, 0), "12.8", "2.1.0", "Blackwell"),
}
TE_PACKAGES = ("transformer-engine", "transformer_engine", "transformer-engine-torch", "transformer_engine_torch")


@dataclass(frozen=True)
class PrecisionSupport:
    """What `check_hardware_support` found (for the run log)."""

    device: str
    capability: tuple[int, int]
    cuda: str
    transformer_engine: str
    recipe: str

    def describe(self) -> str:
        major, minor = self.capability
        return (f"FP8 {self.recipe} on {self.device} (compute capability {major}.{minor}), CUDA {self.cuda}, "
                f"Transformer Engine {self.transformer_engine}")


# Probes of the machine, module-level so that tests can replace them.


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _device() -> tuple[str, tuple[int, int]]:
    import torch

    index = torch.cuda.current_device()
    return torch.cuda.get_device_name(index), tuple(torch.cuda.get_device_capability(index))


def _cuda_version() -> str | None:
    import torch

    return torch.version.cuda


def _te_version() -> str | None:
    """Transformer Engine's version, None when it is not installed (import-free when absent)."""
    if importlib.util.find_spec("transformer_engine") is None:
        return None
    from importlib import metadata

    for name in TE_PACKAGES:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    te = importlib.import_module("transformer_engine")
    return getattr(te, "__version__", None)


_TE_PROBES = {
    # recipe -> (function names in TE 2.x's transformer_engine.pytorch.fp8 / .quantization)
    "delayed": ("check_fp8_support", "is_fp8_available"),
    "tensorwise": ("check_fp8_support", "is_fp8_available"),
    "blockwise": ("check_fp8_block_scaling_support", "is_fp8_block_scaling_available"),
    "mxfp8": ("check_mxfp8_support", "is_mxfp8_available"),
}


def _te_support(recipe: str) -> tuple[bool, str] | None:
    """Transformer Engine's own verdict on `recipe` for this GPU, (ok, reason); None when this TE
    has no probe for it. TE 2.x exposes `check_*_support() -> (bool, str)` in
    transformer_engine.pytorch.fp8; newer releases `is_*_available(return_reason=True)` in
    transformer_engine.pytorch.quantization."""
    for module_name in ("transformer_engine.pytorch.quantization", "transformer_engine.pytorch.fp8"):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        for name in _TE_PROBES[recipe]:
            probe = getattr(module, name, None)
            if probe is None:
                continue
            result = probe(return_reason=True) if name.startswith("is_") else probe()
            ok, reason = result if isinstance(result, tuple) else (bool(result), "")
            return bool(ok), str(reason or "")
    return None


def _version_tuple(text: str):
    from packaging.version import Version

    return Version(text)


def check_hardware_support(config: PrecisionConfig | None) -> PrecisionSupport | None:
    """Raise UnsupportedPrecisionError naming every reason this machine cannot run `config`'s
    FP8 recipe; return what was found when it can. Without FP8 it checks nothing and returns
    None (a BF16/FP32 run, CPU included, is never refused here)."""
    if config is None or not config.enabled:
        return None
    recipe, need = config.fp8_recipe, REQUIREMENTS[config.fp8_recipe]
    what = f"model.precision.fp8={config.fp8!r} with fp8_recipe={recipe!r}"
    if not _cuda_available():
        raise UnsupportedPrecisionError(
            f"{what} needs a CUDA GPU ({need.hardware}, compute capability >= "
            f"{need.min_capability[0]}.{need.min_capability[1]}) and Transformer Engine; this machine has no CUDA "
            "device. Set model.precision.fp8=None to train in model.params_dtype (BF16/FP32) here."
        )
    problems = []
    name, capability = _device()
    if tuple(capability) < need.min_capability:
        hint = ""
        if recipe == "mxfp8" and tuple(capability) >= (9, 0):
            hint = " (mxfp8 is Blackwell-only: use fp8_recipe='blockwise' or 'tensorwise' on Hopper)"
        elif recipe == "blockwise" and tuple(capability) >= (8, 9):
            hint = " (use fp8_recipe='tensorwise' or 'delayed' on Ada)"
        problems.append(
            f"the GPU '{name}' has compute capability {capability[0]}.{capability[1]}; {recipe} needs "
            f">= {need.min_capability[0]}.{need.min_capability[1]} ({need.hardware}){hint}"
        )
    cuda = _cuda_version()
    if cuda is None:
        problems.append("torch was built without CUDA (torch.version.cuda is None)")
    elif _version_tuple(cuda) < _version_tuple(need.min_cuda):
        problems.append(f"torch is built with CUDA {cuda}; {recipe} needs CUDA >= {need.min_cuda}")
    te = _te_version()
    if te is None:
        problems.append("Transformer Engine is not installed (pip install 'transformer-engine[pytorch]', or use an "
                        "NGC PyTorch container)")
    elif _version_tuple(te) < _version_tuple(need.min_te):
        problems.append(f"Transformer Engine is {te}; megatron-core uses the {recipe} recipe only from TE "
                        f">= {need.min_te.replace('.dev0', '')}")
    if not problems and te is not None:
        verdict = _te_support(recipe)
        if verdict is not None and not verdict[0]:
            problems.append(f"Transformer Engine {te} reports the {recipe} recipe unsupported here: "
                            f"{verdict[1] or 'no reason given'}")
    if problems:
        raise UnsupportedPrecisionError(f"{what} cannot run on this machine: " + "; ".join(problems) + ".")
    return PrecisionSupport(name, tuple(capability), cuda, te, recipe)


# ----------------------------------------------------------------------------- runtime helpers


def refresh_fp8_weight_caches(model) -> int:
    """Tell every Transformer Engine module that its weights changed: the next forward
    re-quantizes them (megatron-core's `set_is_first_microbatch`, which its pipeline schedules
    call after each optimizer step). Needed after every optimizer step when
    `cache_fp8_weights=True`; harmless otherwise. Returns the number of modules flagged."""
    flagged = 0
    for module in model.modules():
        if hasattr(module, "is_first_microbatch"):
            module.is_first_microbatch = True
            flagged += 1
    return flagged
