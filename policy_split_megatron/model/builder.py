"""Build the Megatron policy (`GPTModel`) for this process's tensor/pipeline-parallel rank.

The layer spec is chosen by device: Transformer Engine on CUDA (so FP8 is possible), megatron-core's
local spec with an SDPA core attention on CPU (the local `DotProductAttention` needs CUDA).
FP8 (`precision`, see model/precision.py) needs the Transformer Engine spec on a CUDA GPU: it is
refused on CPU with a clear error, and the machine is checked before anything is built.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import (
    get_gpt_layer_local_spec,
    get_gpt_layer_with_transformer_engine_spec,
)
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_config import TransformerConfig

from policy_split_megatron.cpu_shims import megatron_on_cpu
from policy_split_megatron.model.architecture import ModelArchitecture
from policy_split_megatron.model.cpu_modules import CPURotaryEmbedding, SDPACoreAttention
from policy_split_megatron.model.precision import (
    PrecisionConfig,
    UnsupportedPrecisionError,
    check_hardware_support,
    transformer_config_kwargs,
)


def transformer_engine_available() -> bool:
    return torch.cuda.is_available() and importlib.util.find_spec("transformer_engine") is not None


def layer_spec(arch: ModelArchitecture, use_transformer_engine: bool) -> ModuleSpec:
    if use_transformer_engine:
        return get_gpt_layer_with_transformer_engine_spec(qk_layernorm=arch.qk_norm)
    spec = get_gpt_layer_local_spec(qk_layernorm=arch.qk_norm, normalization="RMSNorm")
    spec.submodules.self_attention.submodules.core_attention = SDPACoreAttention
    return spec


def _refuse_fp8_on_cpu(fp8: str | None) -> None:
    if fp8 and not torch.cuda.is_available():
        raise UnsupportedPrecisionError(
            f"FP8 training (model.precision.fp8={fp8!r}) runs through Transformer Engine on a CUDA GPU; this "
            "process has no CUDA device. Set model.precision.fp8=None to train in model.params_dtype on CPU."
        )


def transformer_config(
    arch: ModelArchitecture,
    *,
    params_dtype: torch.dtype = torch.float32,
    use_cpu_initialization: bool | None = None,
    precision: PrecisionConfig | None = None,
    **overrides,
) -> TransformerConfig:
    """The TransformerConfig equivalent of `arch` for the current parallel state. `precision`
    adds the FP8 fields (nothing without FP8); `overrides` pass through last (recompute, ...).
    FP8 on a machine without CUDA raises UnsupportedPrecisionError."""
    _refuse_fp8_on_cpu((precision.fp8 if precision is not None else None) or overrides.get("fp8"))
    tp = parallel_state.get_tensor_model_parallel_world_size()
    pp = parallel_state.get_pipeline_model_parallel_world_size()
    vpp = parallel_state.get_virtual_pipeline_model_parallel_world_size()
    arch.validate_parallel(tp, pp, vpp or 1)
    if precision is not None:
        precision.check_layers(arch.num_layers, pp)
    on_cpu = not torch.cuda.is_available()
    kwargs = dict(
        num_layers=arch.num_layers,
        hidden_size=arch.hidden_size,
        num_attention_heads=arch.num_attention_heads,
        num_query_groups=arch.num_key_value_heads,
        kv_channels=arch.head_dim,
        ffn_hidden_size=arch.ffn_hidden_size,
        normalization="RMSNorm",
        layernorm_epsilon=arch.rms_norm_eps,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=arch.qkv_bias,
        qk_layernorm=arch.qk_norm,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        virtual_pipeline_model_parallel_size=vpp,
        params_dtype=params_dtype,
        pipeline_dtype=params_dtype,  # dtype of the activations sent between stages
        bf16=params_dtype == torch.bfloat16,
        fp16=params_dtype == torch.float16,
        use_cpu_initialization=on_cpu if use_cpu_initialization is None else use_cpu_initialization,
        # The fusions below need CUDA extensions; the TE spec brings its own fused kernels.
        bias_activation_fusion=False,
        masked_softmax_fusion=False,
        bias_dropout_fusion=False,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
        persist_layer_norm=False,
        # Over gloo (CPU), batch_isend_irecv pairs a rank's messages to one peer in posting order: at
        # PP=2 the previous and the next stage are the same rank, and megatron-core 0.16.1's
        # interleaved schedule then received a gradient as an activation (wrong gradients; seen with
        # 2 virtual stages). Separate sends and receives pair correctly. NCCL keeps megatron's default.
        batch_p2p_comm=not on_cpu,
    )
    kwargs.update(transformer_config_kwargs(precision))
    kwargs.update(overrides)
    return TransformerConfig(**kwargs)


RECOMPUTE_MODES = ("none", "selective", "full")


def recompute_overrides(mode: str) -> dict:
    """TransformerConfig fields of activation recomputation `mode` (model.recompute): "selective"
    recomputes the core attention in the backward pass (megatron-core's default selective module),
    "full" every transformer layer (uniform, one layer per checkpoint)."""
    if mode not in RECOMPUTE_MODES:
        raise ValueError(f"model.recompute must be one of {RECOMPUTE_MODES}, got {mode!r}")
    if mode == "selective":
        return {"recompute_granularity": "selective"}
    if mode == "full":
        return {"recompute_granularity": "full", "recompute_method": "uniform", "recompute_num_layers": 1}
    return {}


def build_policy_model(
    arch: ModelArchitecture,
    *,
    params_dtype: torch.dtype = torch.float32,
    use_transformer_engine: bool | None = None,
    precision: PrecisionConfig | None = None,
    vp_stage: int | None = None,
    **config_overrides,
) -> GPTModel:
    """The GPTModel stage of this rank: embedding on the first pipeline stage, output layer on the
    last, layers offset by megatron-core from the pipeline rank. With virtual pipeline stages
    (initialize_model_parallel's virtual size), `vp_stage` picks this rank's chunk: the embedding in
    chunk 0 of the first stage, the output layer in the last chunk of the last stage. Tied embeddings are handled the
    way megatron-core does (the last stage keeps a copy of the word embeddings as output weight,
    synchronised through the embedding group).

    With FP8 in `precision` the machine is checked first (`check_hardware_support`: CUDA, compute
    capability, CUDA and Transformer Engine versions) and the Transformer Engine spec is required;
    megatron-core then runs the transformer layers under FP8 autocast (see model/precision.py)."""
    fp8 = (precision.fp8 if precision is not None else None) or config_overrides.get("fp8")
    _refuse_fp8_on_cpu(fp8)
    if precision is not None:
        check_hardware_support(precision)
    use_te = transformer_engine_available() if use_transformer_engine is None else use_transformer_engine
    if fp8 and not use_te:
        raise UnsupportedPrecisionError(
            f"FP8 training (fp8={fp8!r}) needs the Transformer Engine layer spec: "
            + ("use_transformer_engine=False was passed" if use_transformer_engine is False
               else "Transformer Engine is not installed")
        )
    config = transformer_config(arch, params_dtype=params_dtype, precision=precision, **config_overrides)
    tp = parallel_state.get_tensor_model_parallel_world_size()
    on_cpu = not torch.cuda.is_available()
    with megatron_on_cpu():
        model = GPTModel(
            config=config,
            transformer_layer_spec=layer_spec(arch, use_te),
            vocab_size=arch.padded_vocab_size(tp),  # padding rows are zero; see forward_logits
            max_sequence_length=arch.max_position_embeddings,
            pre_process=parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage),
            post_process=parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage),
            vp_stage=vp_stage,
            parallel_output=True,
            share_embeddings_and_output_weights=arch.tie_word_embeddings,
            position_embedding_type="rope",
            rotary_base=int(arch.rope_theta) if float(arch.rope_theta).is_integer() else arch.rope_theta,
            rope_scaling=arch.rope_scaling_factor is not None,
            rope_scaling_factor=arch.rope_scaling_factor or 8.0,
        )
    if not on_cpu:
        model = model.cuda()
    elif getattr(model, "rotary_pos_emb", None) is not None:
        model.rotary_pos_emb.__class__ = CPURotaryEmbedding
    return model


def forward_logits(model: GPTModel, input_ids: torch.Tensor, arch: ModelArchitecture) -> torch.Tensor:
    """Causal forward of a single-stage model: [b, s] token ids -> [b, s, V_padded/TP] logits.
    Columns at or past `arch.vocab_size` are vocabulary padding: pass `vocab_size=arch.vocab_size`
    to `ops.vocab_parallel.logprobs_and_entropy`, which leaves them out of the softmax."""
    positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0).expand_as(input_ids)
    return model(input_ids=input_ids, position_ids=positions, attention_mask=None)
