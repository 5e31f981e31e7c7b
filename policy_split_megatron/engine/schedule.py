"""Every forward (and backward) of the policy goes through megatron-core's pipeline schedule.

`run_schedule` hands packed micro-batches (`engine/packing.py`) to `get_forward_backward_func()`:
the no-pipelining schedule at PP=1, 1F1B at PP>1 (and the interleaved schedule with virtual
stages). The last pipeline stage turns its vocab-parallel logits into per-token log-probs and
entropies (`ops.logprobs_and_entropy`, never gathering the vocabulary) aligned with each row's
tokens, and calls the caller's `loss_fn(pack, log_probs, entropy)`, which returns

    (numerator, count, report)

- `numerator`: a scalar whose gradient is this micro-batch's share of the loss BEFORE division by
  the global denominator (e.g. the sum of its token losses);
- `count`: this micro-batch's integer share of that denominator (its valid tokens, or sequences);
- `report`: a dict of scalar tensors to sum over micro-batches and data-parallel ranks (metrics).

megatron-core then does the rest with `calculate_per_token_loss=True`: it sums `count` over the
micro-batches, DDP sums gradients over data-parallel ranks (no averaging), and
`finalize_model_grads` broadcasts the count from the last stage, all-reduces it over DP and scales
the gradients by 1 / (global count). So the update is the gradient of numerator / global count
over the whole mini-batch, whatever the micro-batching, DP size or PP size; nothing is divided on
the host and no collective is issued per micro-batch.

Forward-only passes (old, reference and teacher log-probs, evaluation entropies) use the same
path with `forward_only=True`: the reports of the last stage are returned in micro-batch order.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
from megatron.core import parallel_state
from megatron.core.pipeline_parallel import get_forward_backward_func

from policy_split_megatron.cpu_shims import megatron_on_cpu
from policy_split_megatron.engine.packing import Pack, dummy_pack, pad_pack
from policy_split_megatron.ops import logprobs_and_entropy

LossFn = Callable[[Pack, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, dict]]


@functools.lru_cache(maxsize=None)
def _zero_count(device: torch.device) -> torch.Tensor:
    return torch.zeros((), dtype=torch.int, device=device)


def _last_stage_loss(pack: Pack, loss_fn: LossFn, logits: torch.Tensor, *, temperature: float,
                     chunk_size: int | None, vocab_size: int):
    # logits: [1, T, V/TP] (megatron-core's [b, s, v] with b = 1 for a packed micro-batch: its
    # transpose of a size-1 dim is a view, so no copy of the logits is made).
    logp_next, entropy_next = logprobs_and_entropy(
        logits, pack.next_ids, temperature=temperature, chunk_size=chunk_size, vocab_size=vocab_size)
    # Shift the per-token VALUES (T floats), never the logits (T x V/TP): the old
    # `logits[:, :-1].contiguous()` copied the whole logits tensor.
    log_probs = pack.align_to_rows(logp_next)
    entropy = pack.align_to_rows(entropy_next)
    numerator, count, report = loss_fn(pack, log_probs, entropy)
    if pack.is_dummy:  # keeps the graph (the backward must run on every rank) with zero weight
        numerator = logits.sum() * 0.0 + numerator * 0.0
        count = count * 0
        report = {k: v * 0 for k, v in report.items()}
    return numerator, count.to(torch.int), report


def run_schedule(
    model: Sequence[torch.nn.Module],
    packs: Sequence[Pack],
    loss_fn: LossFn,
    *,
    forward_only: bool,
    temperature: float,
    chunk_size: int | None,
    vocab_size: int,
    alignment: int = 1,
) -> list[dict]:
    """Run the packs through megatron-core's schedule on every rank of the pipeline (all ranks
    must pass the same number of packs with the same shapes; the data itself is replicated across
    the TP and PP ranks of a data-parallel replica). Returns the last stage's reports, one per
    pack, in order ([] on other stages). `model`: this rank's model chunks (DDP-wrapped for
    training; plain modules are fine for forward-only passes). With several chunks (the interleaved
    schedule) the micro-batches are padded with zero-weight placeholders to a multiple of the
    pipeline size, which megatron-core's interleaved schedule requires."""
    if not packs:
        raise ValueError("run_schedule needs at least one micro-batch (use engine.packing.dummy_pack)")
    model = list(model)
    given = len(packs)
    pp = parallel_state.get_pipeline_model_parallel_world_size()
    if len(model) > 1:
        device = packs[0].input_ids.device
        packs = list(packs) + [dummy_pack(alignment).to(device) for _ in range(-given % pp)]
    if pp > 1:
        # Stages exchange [T, 1, hidden] activations: one T for the whole call. (megatron-core 0.16.1's
        # variable_seq_lengths exchanges shapes per send, but its interleaved schedule then pairs a
        # micro-batch's activations with another's shape: seen with 2 virtual stages, packs of 23 and
        # 25 tokens. A fixed shape also spares the shape messages.)
        longest = max(p.num_tokens for p in packs)
        packs = [pad_pack(p, longest) for p in packs]

    def forward_step(data_iterator, chunk):
        pack = next(data_iterator)
        output = chunk(input_ids=pack.input_ids, position_ids=pack.position_ids, attention_mask=None,
                       packed_seq_params=pack.seq_params())
        return output, functools.partial(_last_stage_loss, pack, loss_fn, temperature=temperature,
                                         chunk_size=chunk_size, vocab_size=vocab_size)

    iterators = [iter(packs) for _ in model]
    with megatron_on_cpu():
        reports = get_forward_backward_func()(
            forward_step_func=forward_step,
            data_iterator=iterators if len(model) > 1 else iterators[0],
            model=model if len(model) > 1 else model[0],
            num_microbatches=len(packs),
            seq_length=max(p.num_tokens for p in packs),  # every pack's length at PP > 1 (padded above)
            micro_batch_size=1,
            forward_only=forward_only,
        )
    return list(reports)[:given] if parallel_state.is_pipeline_last_stage(ignore_virtual=True) else []
