"""Packed micro-batches: rows concatenated into one THD sequence instead of padded to the longest.

A batch of rows (`input_ids` [B, L] right-padded, `lengths` [B]) is cut into micro-batches of
consecutive rows whose packed length stays within a token budget. Each micro-batch (`Pack`) is one
sequence of T tokens, `input_ids` [1, T], with megatron-core's `PackedSeqParams` (`cu_seqlens`,
qkv_format="thd"): attention never crosses a row boundary and RoPE positions restart at every row
(Transformer Engine's THD kernels on GPU; `model/cpu_modules.py` on CPU). Nothing is padded except
each row up to the FP8 GEMM alignment (`alignment`, 1 without FP8), so the FP8 rule that every
GEMM sees a multiple of 16 tokens holds for the whole pack; those few pad tokens sit after the
row's last token, where causal attention keeps them from touching real positions.

Model outputs at the T packed positions come back to the rows' padded layout [b, W] (W = longest
row of the pack) with `Pack.unpack`, a scatter of per-token values (never of vocabulary-sized
tensors), so the losses of `algorithms/` see the same [rows, tokens] tensors as before.

Alignment convention (as in trainer/forward.py before packing): position t of a row holds
log pi(input_ids[t] | input_ids[:t]); position 0 of every row has no prediction and holds 0.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch


def plan_packs(lengths: list[int], token_budget: int, alignment: int = 1) -> list[list[int]]:
    """Group consecutive rows so that their packed length (each row rounded up to `alignment`)
    stays within `token_budget`. A row longer than the budget forms a micro-batch of its own."""
    if token_budget <= 0:
        raise ValueError(f"token_budget must be > 0, got {token_budget}")
    packs: list[list[int]] = []
    current: list[int] = []
    used = 0
    for row, length in enumerate(lengths):
        size = aligned_length(length, alignment)
        if current and used + size > token_budget:
            packs.append(current)
            current, used = [], 0
        current.append(row)
        used += size
    if current:
        packs.append(current)
    return packs


def aligned_length(length: int, alignment: int) -> int:
    return -(-max(int(length), 1) // alignment) * alignment


@dataclass
class Pack:
    """One packed micro-batch of `b` rows (see the module docstring)."""

    rows: torch.Tensor  # [b] long: indices of the rows in the batch they came from
    input_ids: torch.Tensor  # [1, T] long
    next_ids: torch.Tensor  # [1, T] long: input_ids shifted left (the token each position predicts)
    position_ids: torch.Tensor  # [1, T] long: position within the row
    cu_seqlens: torch.Tensor  # [b + 1] int32: row boundaries in the pack (aligned lengths)
    row_starts: torch.Tensor  # [b] long: first packed position of each row
    real_index: torch.Tensor  # [n] long: packed positions of real (not alignment-pad) tokens
    real_row: torch.Tensor  # [n] long: their row in the pack
    real_pos: torch.Tensor  # [n] long: their position in the row
    width: int  # longest real row of the pack
    max_seqlen: int  # longest aligned row
    is_dummy: bool = False  # a placeholder pack of a rank with no rows (contributes nothing)

    @property
    def num_tokens(self) -> int:
        return self.input_ids.shape[1]

    @property
    def num_rows(self) -> int:
        return 0 if self.is_dummy else self.rows.numel()

    def seq_params(self):
        from megatron.core.packed_seq_params import PackedSeqParams

        return PackedSeqParams(qkv_format="thd", cu_seqlens_q=self.cu_seqlens, cu_seqlens_kv=self.cu_seqlens,
                               max_seqlen_q=self.max_seqlen, max_seqlen_kv=self.max_seqlen)

    def to(self, device: torch.device) -> "Pack":
        return replace(self, **{f.name: getattr(self, f.name).to(device) for f in fields(self)
                                if isinstance(getattr(self, f.name), torch.Tensor)})

    def align_to_rows(self, next_token_values: torch.Tensor) -> torch.Tensor:
        """[1, T] values computed at each position for the NEXT token -> [b, width] values of each
        row's own tokens (position 0 of a row: 0). Differentiable; a scatter of T values."""
        shifted = torch.roll(next_token_values.reshape(-1), 1)  # position p now holds the value for token p
        shifted = shifted.index_fill(0, self.row_starts, 0.0)
        out = shifted.new_zeros(max(self.num_rows, 1), self.width)
        return out.index_put((self.real_row, self.real_pos), shifted[self.real_index])

    def gather_rows(self, batch_values: torch.Tensor) -> torch.Tensor:
        """Rows of a [B, L] batch tensor in this pack's [b, width] layout."""
        if self.is_dummy:
            return batch_values.new_zeros(1, self.width)
        return batch_values[self.rows, : self.width]


def build_pack(input_ids: torch.Tensor, lengths: torch.Tensor, rows: list[int], alignment: int = 1) -> Pack:
    """Pack `rows` of a right-padded [B, L] batch (real lengths `lengths`)."""
    pieces, positions, starts, cu = [], [], [], [0]
    real_index, real_row, real_pos = [], [], []
    for local, row in enumerate(rows):
        length = int(lengths[row])
        size = aligned_length(length, alignment)
        ids = input_ids[row, :length]
        if size > length:  # alignment padding repeats the last token: any id works, it is never scored
            ids = torch.cat([ids, ids[-1:].expand(size - length)])
        pieces.append(ids)
        positions.append(torch.arange(size))
        starts.append(cu[-1])
        real_index.append(torch.arange(cu[-1], cu[-1] + length))
        real_row.append(torch.full((length,), local))
        real_pos.append(torch.arange(length))
        cu.append(cu[-1] + size)
    packed = torch.cat(pieces).unsqueeze(0)
    return Pack(
        rows=torch.tensor(rows, dtype=torch.long),
        input_ids=packed,
        next_ids=torch.roll(packed, -1, dims=1),
        position_ids=torch.cat(positions).unsqueeze(0),
        cu_seqlens=torch.tensor(cu, dtype=torch.int32),
        row_starts=torch.tensor(starts, dtype=torch.long),
        real_index=torch.cat(real_index),
        real_row=torch.cat(real_row),
        real_pos=torch.cat(real_pos),
        width=max(int(lengths[r]) for r in rows),
        max_seqlen=max(cu[i + 1] - cu[i] for i in range(len(rows))),
    )


def pad_pack(pack: Pack, num_tokens: int) -> Pack:
    """`pack` grown to `num_tokens` by one trailing segment of its own (attention never reaches it,
    nothing reads its values back): pipeline stages then exchange activations of one fixed shape."""
    extra = num_tokens - pack.num_tokens
    if extra < 0:
        raise ValueError(f"cannot pad a pack of {pack.num_tokens} tokens to {num_tokens}")
    if extra == 0:
        return pack
    device = pack.input_ids.device
    input_ids = torch.cat([pack.input_ids, pack.input_ids[:, -1:].expand(1, extra)], dim=1)
    return replace(
        pack,
        input_ids=input_ids,
        next_ids=torch.roll(input_ids, -1, dims=1),
        position_ids=torch.cat([pack.position_ids, torch.arange(extra, device=device).unsqueeze(0)], dim=1),
        cu_seqlens=torch.cat([pack.cu_seqlens, pack.cu_seqlens[-1:] + extra]),
        max_seqlen=max(pack.max_seqlen, extra),
    )


def dummy_pack(alignment: int = 1, token_id: int = 0) -> Pack:
    """A one-row pack of `alignment` tokens for a rank that has no rows in a micro-batch slot:
    every rank must run the schedule (its collectives) the same number of times; the loss
    functions give it zero weight (`Pack.is_dummy`)."""
    pack = build_pack(torch.full((1, alignment), token_id, dtype=torch.long), torch.tensor([alignment]), [0], 1)
    return replace(pack, rows=torch.zeros(0, dtype=torch.long), is_dummy=True)


def pack_batch(input_ids: torch.Tensor, lengths: torch.Tensor, token_budget: int, alignment: int = 1,
               rows: list[int] | None = None) -> list[Pack]:
    """Packs of `rows` (default: all rows) of a right-padded batch, in order, within `token_budget`."""
    rows = list(range(input_ids.shape[0])) if rows is None else list(rows)
    plan = plan_packs([int(lengths[r]) for r in rows], token_budget, alignment)
    return [build_pack(input_ids, lengths, [rows[i] for i in group], alignment) for group in plan]
