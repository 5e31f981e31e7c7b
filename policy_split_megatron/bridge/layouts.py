"""How one Megatron parameter relates to its Hugging Face tensor(s) under tensor parallelism.

Each layout knows two things: how to cut this TP rank's shard out of the full HF tensor(s)
(`shard`), and how to rebuild the full HF tensor(s) from every rank's shard (`unshard`). Both are
pure tensor functions, so they are tested without process groups.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from policy_split_megatron.model.architecture import ModelArchitecture


class Layout:
    """Base: a parameter that every TP rank holds whole (norm weights)."""

    name = "replicated"

    def shard(self, hf: list[torch.Tensor], rank: int, size: int, arch: ModelArchitecture) -> torch.Tensor:
        (full,) = hf
        return full

    def unshard(self, shards: list[torch.Tensor], arch: ModelArchitecture) -> list[torch.Tensor]:
        return [shards[0]]


class RowLayout(Layout):
    """Split along the input dimension (dim 1): RowParallelLinear (attention output, fc2)."""

    name = "row"

    def shard(self, hf, rank, size, arch):
        (full,) = hf
        return full.chunk(size, dim=1)[rank]

    def unshard(self, shards, arch):
        return [torch.cat(shards, dim=1)]


class VocabLayout(Layout):
    """Embedding / output layer: rows padded with zeros to the padded vocabulary, then split. The
    padded columns of the logits are left out by the log-prob op (its `vocab_size` argument)."""

    name = "vocab"

    def shard(self, hf, rank, size, arch):
        (full,) = hf
        padded = arch.padded_vocab_size(size)
        if full.shape[0] != arch.vocab_size:
            raise ValueError(f"vocabulary tensor has {full.shape[0]} rows, config says vocab_size={arch.vocab_size}")
        per_rank = padded // size
        out = full.new_zeros((per_rank, *full.shape[1:]))
        start = rank * per_rank
        rows = full[start : min(start + per_rank, arch.vocab_size)]
        out[: rows.shape[0]] = rows
        return out

    def unshard(self, shards, arch):
        return [torch.cat(shards, dim=0)[: arch.vocab_size]]


class QKVLayout(Layout):
    """q, k, v projections (weight or bias) fused into `linear_qkv`.

    Megatron interleaves by query group: for each of the `num_key_value_heads` groups it stores the
    group's q heads, then its k head, then its v head. TP ranks hold contiguous runs of groups."""

    name = "qkv"

    @staticmethod
    def _grouped(arch: ModelArchitecture):
        groups = arch.num_key_value_heads
        q_per_group = arch.num_attention_heads // groups
        return groups, q_per_group, arch.head_dim

    def fuse(self, q, k, v, arch):
        groups, q_per_group, head_dim = self._grouped(arch)
        trailing = q.shape[1:]
        q = q.reshape(groups, q_per_group * head_dim, *trailing)
        k = k.reshape(groups, head_dim, *trailing)
        v = v.reshape(groups, head_dim, *trailing)
        return torch.cat([q, k, v], dim=1).reshape(-1, *trailing)

    def shard(self, hf, rank, size, arch):
        return self.fuse(*hf, arch).chunk(size, dim=0)[rank]

    def unshard(self, shards, arch):
        groups, q_per_group, head_dim = self._grouped(arch)
        fused = torch.cat(shards, dim=0)
        trailing = fused.shape[1:]
        fused = fused.reshape(groups, (q_per_group + 2) * head_dim, *trailing)
        q, k, v = fused.split([q_per_group * head_dim, head_dim, head_dim], dim=1)
        return [t.reshape(-1, *trailing) for t in (q, k, v)]


class GateUpLayout(Layout):
    """SwiGLU gate and up projections fused into `linear_fc1`: each TP rank holds
    [gate shard; up shard], so the full fused tensor is NOT [gate; up] but the ranks' pairs."""

    name = "gate_up"

    def shard(self, hf, rank, size, arch):
        gate, up = hf
        return torch.cat([gate.chunk(size, dim=0)[rank], up.chunk(size, dim=0)[rank]], dim=0)

    def unshard(self, shards, arch):
        pairs = [s.chunk(2, dim=0) for s in shards]
        return [torch.cat([g for g, _ in pairs], dim=0), torch.cat([u for _, u in pairs], dim=0)]


@dataclass(frozen=True)
class ParamMapping:
    """One Megatron parameter (name pattern with `{layer}` for the global layer index) and the HF
    tensor names it is built from."""

    megatron: str
    hf: tuple[str, ...]
    layout: Layout

    @property
    def per_layer(self) -> bool:
        return "{layer}" in self.megatron
