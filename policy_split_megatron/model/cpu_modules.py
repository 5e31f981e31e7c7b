"""CPU stand-ins for the two megatron-core pieces that hard-code CUDA in the local layer spec.

- `SDPACoreAttention`: the local `DotProductAttention` takes its score buffer from a CUDA-only
  global memory buffer. This drop-in for the spec's `core_attention` slot calls torch's
  scaled-dot-product attention instead.
- `CPURotaryEmbedding`: `RotaryEmbedding.get_emb` moves `inv_freq` to `torch.cuda.current_device()`
  on first use; on CPU it must stay where it is.

Calls that megatron-core makes on `torch.cuda` outside these modules are shimmed in
`policy_split_megatron/cpu_shims.py`.

On GPUs the Transformer Engine spec and the stock RoPE are used, so none of this runs there.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig


class SDPACoreAttention(MegatronModule):
    """Causal attention on the local heads of one tensor-parallel rank.

    Inputs are megatron's [s, b, heads, head_dim] layout (keys/values with the local query-group
    count); the output is [s, b, heads * head_dim]."""

    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str,
        attention_dropout: float | None = None,
        softmax_scale: float | None = None,
        cp_comm_type: str | None = None,
        pg_collection=None,
    ):
        super().__init__(config=config)
        if config.context_parallel_size != 1:
            raise ValueError("SDPACoreAttention does not support context parallelism; use the TE spec")
        self.attn_mask_type = attn_mask_type
        self.dropout = config.attention_dropout if attention_dropout is None else attention_dropout
        self.softmax_scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(config.kv_channels)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        attn_mask_type: AttnMaskType | None = None,
        attention_bias: torch.Tensor | None = None,
        packed_seq_params=None,
    ) -> torch.Tensor:
        if attention_bias is not None:
            raise NotImplementedError("attention bias needs the TE spec")
        if packed_seq_params is not None:
            return self._packed(query, key, value, packed_seq_params)
        seq, batch, heads, head_dim = query.shape
        # [s, b, n, d] -> [b, n, s, d]
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        mask_type = attn_mask_type or self.attn_mask_type
        causal = mask_type == AttnMaskType.causal and attention_mask is None
        mask = None
        if attention_mask is not None:
            # megatron masks are True where attention is NOT allowed.
            mask = ~attention_mask
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=causal,
            scale=self.softmax_scale,
            enable_gqa=k.shape[1] != heads,
        )
        return out.permute(2, 0, 1, 3).reshape(seq, batch, heads * head_dim)

    def _packed(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, params) -> torch.Tensor:
        """THD layout (megatron squeezes the batch dim): [t, heads, d] with row boundaries
        `cu_seqlens`; causal attention within each row, never across rows. Returns [t, heads * d]."""
        if params.qkv_format != "thd":
            raise NotImplementedError(f"packed sequences in {params.qkv_format!r} layout need the TE spec")
        total, heads, head_dim = query.shape
        bounds = params.cu_seqlens_q.tolist()
        outs = []
        for start, end in zip(bounds[:-1], bounds[1:]):
            # [len, n, d] -> [1, n, len, d]
            q, k, v = (t[start:end].permute(1, 0, 2).unsqueeze(0) for t in (query, key, value))
            out = F.scaled_dot_product_attention(
                q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True,
                scale=self.softmax_scale, enable_gqa=k.shape[1] != heads,
            )
            outs.append(out.squeeze(0).permute(1, 0, 2))
        return torch.cat(outs).reshape(total, heads * head_dim)


class CPURotaryEmbedding(RotaryEmbedding):
    """RotaryEmbedding whose frequencies stay on the CPU (see the module docstring)."""

    def get_emb(self, max_seq_len: int, offset: int = 0) -> torch.Tensor:
        freqs = self.get_freqs_non_repeated(max_seq_len, offset)
        if self.rotary_interleaved:
            emb = torch.stack((freqs.view(-1, 1), freqs.view(-1, 1)), dim=-1).view(freqs.shape[0], -1)
        else:
            emb = torch.cat((freqs, freqs), dim=-1)
        return emb[:, None, None, :]

