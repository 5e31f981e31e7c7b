"""Token log-probabilities and entropies of vocab-parallel logits, without gathering the vocabulary.

With tensor parallelism the LM head leaves each rank r of the TP group with the vocab columns
[r*V/TP, (r+1)*V/TP) of the logits. RL losses need, per token, the log-probability of the sampled
token and the entropy of the (temperature-scaled) distribution. Gathering the full [T, V] logits for
`log_softmax` costs TP times the shard in memory (plus as many fp32 temporaries); instead every
quantity here is a per-token reduction that TP ranks combine with two small collectives.

Math, per token, with z' = z / T (temperature T), m = max_j z'_j (global), d_j = z'_j - m:

    S        = sum_j exp(d_j)                   (all-reduce SUM of the local partial sums)
    log p_t  = z'_t - m - log S  = d_t - log S  (d_t: only the rank owning t contributes, others 0)
    E_p[d]   = sum_j exp(d_j) d_j / S           (numerator: all-reduce SUM of local partial sums)
    H        = log Z - E_p[z'] = log S - E_p[d] (log Z = m + log S)

so the forward does exactly two collectives: MAX of the local maxima, then ONE packed SUM of
[S, sum exp(d) d, d_t]. Working with d (shifted by the global max) rather than z' keeps exp() from
overflowing and avoids the cancellation of two large numbers in log Z - E_p[z'].

Gradients with respect to the local logits (p_j = exp(d_j - log S)):

    d log p_t / d z_j = (1[j == t] - p_j) / T
    d H       / d z_j = -p_j (d_j - E_p[d]) / T

Both are local once the per-token scalars m, S and E_p[d] are known, so backward needs no
collective. Backward recomputes exp(d) chunk by chunk from the saved input logits instead of keeping
an fp32 [T, V/TP] softmax alive between the passes. Extra memory: forward two fp32 [chunk, V/TP]
buffers; backward the gradient (input dtype) plus one (fp32 input) or two (bf16/fp16 input) such
buffers; between the passes only a reference to the input and a few fp32 [T] vectors. When only
the log-prob receives a gradient, backward skips the entropy terms (and their buffer) entirely.

Caveats: logits must be finite (a -inf "masked" logit gives 0 * -inf = NaN in the entropy, as in
the textbook formula); the target range check costs one host synchronisation on accelerators.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["logprobs_and_entropy"]


def _resolve_tp_group(tp_group: Any) -> tuple[Any, int, int]:
    """Return (group, size, rank); group is None when no communication is needed (TP = 1)."""
    if tp_group is None:
        # Megatron's parallel state cannot be initialized if its module was never imported; checking
        # first avoids importing all of megatron.core for single-process use.
        parallel_state = sys.modules.get("megatron.core.parallel_state")
        if parallel_state is None or not parallel_state.model_parallel_is_initialized():
            return None, 1, 0
        tp_group = parallel_state.get_tensor_model_parallel_group()
    elif not isinstance(tp_group, dist.ProcessGroup):
        raise TypeError("tp_group must be a torch.distributed.ProcessGroup or None, got "
                        f"{type(tp_group).__name__}")
    if not dist.is_initialized():
        raise RuntimeError("tp_group was given but torch.distributed is not initialized")
    size = dist.get_world_size(tp_group)
    if size == 1:
        return None, 1, 0
    return tp_group, size, dist.get_rank(tp_group)


def _chunks(num_tokens: int, chunk_size: int | None) -> list[tuple[int, int]]:
    step = max(num_tokens if chunk_size is None else chunk_size, 1)
    return [(s, min(s + step, num_tokens)) for s in range(0, num_tokens, step)]


def _shifted_logits(out: torch.Tensor, logits_chunk: torch.Tensor, temperature: float,
                    shift: torch.Tensor) -> torch.Tensor:
    """out <- logits_chunk / T - shift[:, None], in fp32, in place in a preallocated buffer.

    Every [chunk, V/TP] op in this module writes into buffers allocated once per pass: on CPU a
    fresh large allocation costs more in page faults than the arithmetic done on it, and mixed
    bf16/fp32 ops are slow, so the input is copied (upcast) once and then transformed in place.
    """
    out.copy_(logits_chunk)
    if temperature != 1.0:
        out.div_(temperature)
    return out.sub_(shift.unsqueeze(-1))


class _VocabParallelLogprobEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits_2d: torch.Tensor, target_1d: torch.Tensor, group: Any, rank: int,
                valid: int, temperature: float, chunk_size: int | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        num_tokens, vocab_local = logits_2d.shape
        vocab_start = rank * vocab_local
        chunks = _chunks(num_tokens, chunk_size)
        f32 = dict(dtype=torch.float32, device=logits_2d.device)
        # Only the first `valid` local columns are real tokens; the rest is vocabulary padding.
        real = logits_2d[:, :valid]

        # Global max of z' = z / T. Division by T > 0 is monotone (also after fp32 rounding), so the
        # max of the raw input divided by T equals the max of z': no fp32 copy of the logits needed.
        if valid:
            row_max = real.amax(dim=-1).to(torch.float32)
        else:
            row_max = torch.full((num_tokens,), -math.inf, **f32)
        if temperature != 1.0:
            row_max.div_(temperature)
        if group is not None:
            dist.all_reduce(row_max, op=dist.ReduceOp.MAX, group=group)

        owned = (target_1d >= vocab_start) & (target_1d < vocab_start + valid)
        local_target = torch.where(owned, target_1d - vocab_start, torch.zeros_like(target_1d))

        # Rows: sum exp(d), sum exp(d) * d, d at the target (0 unless this rank owns the target).
        stats = torch.zeros(3, num_tokens, **f32)
        rows = chunks[0][1] if chunks else 0
        d_buf, exp_buf = torch.empty(rows, valid, **f32), torch.empty(rows, valid, **f32)
        for s, e in chunks if valid else ():
            d = _shifted_logits(d_buf[: e - s], real[s:e], temperature, row_max[s:e])
            stats[2, s:e] = d.gather(-1, local_target[s:e].unsqueeze(-1)).squeeze(-1)
            exp_d = torch.exp(d, out=exp_buf[: e - s])
            stats[0, s:e] = exp_d.sum(dim=-1)
            stats[1, s:e] = exp_d.mul_(d).sum(dim=-1)
        del d_buf, exp_buf
        stats[2].masked_fill_(~owned, 0.0)
        if group is not None:
            dist.all_reduce(stats, op=dist.ReduceOp.SUM, group=group)

        sum_exp, mean_d = stats[0], stats[1] / stats[0]  # S and E_p[d]
        log_sumexp = sum_exp.log()
        logprobs = stats[2] - log_sumexp
        entropy = log_sumexp - mean_d

        ctx.set_materialize_grads(False)
        ctx.temperature, ctx.chunk_size, ctx.valid = temperature, chunk_size, valid
        # Backward rebuilds d = z' - m and folds 1/S into per-token factors (p = exp(d) / S) rather
        # than shifting by log Z = m + log S, which would round to fp32 at the scale of m.
        ctx.save_for_backward(logits_2d, local_target, owned, row_max, sum_exp, mean_d)
        return logprobs, entropy

    @staticmethod
    def backward(ctx, grad_logp: torch.Tensor | None, grad_entropy: torch.Tensor | None):
        nothing = (None,) * 7
        if (grad_logp is None and grad_entropy is None) or not ctx.needs_input_grad[0]:
            return nothing
        logits_2d, local_target, owned, row_max, sum_exp, mean_d = ctx.saved_tensors
        temperature, valid = ctx.temperature, ctx.valid
        num_tokens, vocab_local = logits_2d.shape
        chunks = _chunks(num_tokens, ctx.chunk_size) if valid else []
        rows = chunks[0][1] if chunks else 0
        f32 = dict(dtype=torch.float32, device=logits_2d.device)
        grad = torch.empty_like(logits_2d)
        grad[:, valid:].zero_()  # vocabulary padding
        real, grad_real = logits_2d[:, :valid], grad[:, :valid]

        # g_j = (g1 1[j==t] - p_j (g1 + g2 (d_j - E_p[d]))) / T  with g1 = dL/dlogp, g2 = dL/dH,
        #     = g1/T 1[j==t] + exp(d_j) (a d_j + b)  with per-token a = -g2/(T S),
        #                                                  b = -(g1 - g2 E_p[d])/(T S).
        zeros = torch.zeros(num_tokens, **f32)
        g1 = zeros if grad_logp is None else grad_logp.float()
        scale = -1.0 / (temperature * sum_exp)
        a = None if grad_entropy is None else grad_entropy.float() * scale
        b = g1 * scale if a is None else (g1 - grad_entropy.float() * mean_d) * scale
        target_add = None if grad_logp is None else torch.where(owned, g1, zeros) / temperature

        # fp32 logits: the gradient's own slice serves as the exp(d) buffer.
        in_place = grad.dtype == torch.float32
        exp_buf = None if in_place else torch.empty(rows, valid, **f32)
        d_buf = torch.empty(rows, valid, **f32) if a is not None else None
        for s, e in chunks:
            out = grad_real[s:e] if in_place else exp_buf[: e - s]
            if a is None:  # log-prob gradient only: exp(d_j) b
                _shifted_logits(out, real[s:e], temperature, row_max[s:e]).exp_()
                out.mul_(b[s:e].unsqueeze(-1))
            else:
                d = _shifted_logits(d_buf[: e - s], real[s:e], temperature, row_max[s:e])
                torch.exp(d, out=out)
                out.mul_(d.mul_(a[s:e].unsqueeze(-1)).add_(b[s:e].unsqueeze(-1)))
            if target_add is not None:
                out.scatter_add_(-1, local_target[s:e].unsqueeze(-1), target_add[s:e].unsqueeze(-1))
            if not in_place:
                grad_real[s:e].copy_(out)
        return (grad,) + nothing[1:]


def _validate(logits: torch.Tensor, target: torch.Tensor, temperature: float,
              chunk_size: int | None) -> None:
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise TypeError(f"logits must be a floating-point tensor, got "
                        f"{getattr(logits, 'dtype', type(logits).__name__)}")
    if logits.dim() < 1 or logits.shape[-1] == 0:
        raise ValueError(f"logits must have a non-empty vocab (last) dimension, got shape "
                         f"{tuple(logits.shape)}")
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a tensor of token ids, got {type(target).__name__}")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(f"target must hold integer token ids, got dtype {target.dtype}")
    if target.shape != logits.shape[:-1]:
        raise ValueError(f"target shape {tuple(target.shape)} must equal logits.shape[:-1] = "
                         f"{tuple(logits.shape[:-1])}")
    if target.device != logits.device:
        raise ValueError(f"target is on {target.device} but logits are on {logits.device}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"temperature must be a number, got {type(temperature).__name__}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int)):
        raise TypeError(
            f"chunk_size must be a positive int or None, got {type(chunk_size).__name__}")
    if chunk_size is not None and chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size}")


def logprobs_and_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    tp_group: dist.ProcessGroup | None = None,
    temperature: float = 1.0,
    chunk_size: int | None = None,
    vocab_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of `target` and entropy of softmax(logits / temperature), vocab-parallel.

    Args:
        logits: this rank's vocab shard [..., V/TP] (bf16/fp16/fp32); rank r holds the columns
            [r*V/TP, (r+1)*V/TP). A non-contiguous tensor is made contiguous once.
        target: GLOBAL token ids [...] (= logits.shape[:-1]), integer dtype, in [0, V).
        tp_group: the tensor-parallel group; None uses megatron-core's TP group when model
            parallelism is initialized and no communication otherwise.
        temperature: the logits are divided by it first, so that training log-probs match a rollout
            sampled at that temperature; gradients include the 1/T factor.
        chunk_size: tokens per chunk (after flattening the leading dims); bounds the fp32
            temporaries to a few [chunk_size, V/TP] buffers. None processes all tokens at once.
        vocab_size: the real vocabulary when Megatron padded it (V/TP * TP >= vocab_size): the
            padding columns are left out of the softmax (as a rollout engine that samples from the
            real vocabulary does) and get a zero gradient. None: every column is a token.

    Returns:
        (logprobs, entropy), both fp32 with shape logits.shape[:-1]; gradients flow to `logits`
        (in its dtype) through both. Detach the entropy (or leave it out of the loss) when only the
        log-prob gradient is wanted: backward then skips the entropy terms.
    """
    _validate(logits, target, temperature, chunk_size)
    vocab_local = logits.shape[-1]
    group, tp_size, tp_rank = _resolve_tp_group(tp_group)
    padded = vocab_local * tp_size
    if vocab_size is None:
        vocab_size = padded
    elif isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise TypeError(f"vocab_size must be an int or None, got {type(vocab_size).__name__}")
    elif not 0 < vocab_size <= padded:
        raise ValueError(f"vocab_size must be in [1, V/TP * TP = {padded}], got {vocab_size}")
    if target.numel():
        lo, hi = int(target.min()), int(target.max())
        if lo < 0 or hi >= vocab_size:
            raise ValueError(f"target holds token ids in [{lo}, {hi}] but the vocabulary is "
                             f"[0, {vocab_size}) (V/TP = {vocab_local}, TP = {tp_size})")
    valid = min(max(vocab_size - tp_rank * vocab_local, 0), vocab_local)
    lead_shape = logits.shape[:-1]
    logits_2d = logits.contiguous().view(-1, vocab_local)
    target_1d = target.reshape(-1).long()
    logprobs, entropy = _VocabParallelLogprobEntropy.apply(
        logits_2d, target_1d, group, tp_rank, valid, float(temperature), chunk_size
    )
    return logprobs.view(lead_shape), entropy.view(lead_shape)
