"""`logprobs_and_entropy` on a real TP = 2 gloo group against a float64 full-vocab reference.

Every rank builds the same full [..., V] logits (same seed), keeps its vocab shard, runs the op and
compares the log-probs, the entropies and ITS slice of the reference gradient. All cases run in one
pair of spawned processes (module-scoped fixture: spawning and importing megatron dominate the
cost); each test then checks its own case. Errors are max|ours - ref| / max|ref| (scale-free, and
not dominated by entries that are legitimately ~0).

The shards are given different offsets so that their local maxima differ a lot: an implementation
that used the local instead of the global max, or that dropped the entropy's gradient term, fails.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from tests.helpers.distributed import run_distributed

VOCAB, TP = 64, 2
SHARD = VOCAB // TP


def _loss(g_logp, logp, g_entropy, entropy):
    """sum(g1 * logp) + sum(g2 * H), leaving out the terms whose upstream gradient is None."""
    terms = ((g_logp, logp), (g_entropy, entropy))
    return sum((g.to(out.dtype) * out).sum() for g, out in terms if g is not None)


def _reference(logits_full, target, temperature, g_logp, g_entropy, vocab_size=VOCAB):
    """Float64 autograd over the real vocabulary (the first vocab_size columns)."""
    z = logits_full.detach().double().requires_grad_()
    logp_all = torch.log_softmax(z[..., :vocab_size] / temperature, dim=-1)
    logp = logp_all.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    _loss(g_logp, logp, g_entropy, entropy).backward()
    return logp.detach(), entropy.detach(), z.grad


def _inputs(shape, dtype, seed, vocab_size=VOCAB):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(*shape, VOCAB, generator=gen) * 3.0
    logits[..., SHARD:] += 4.0  # shard 1 holds most of the mass: local max != global max
    logits[..., vocab_size:] = 50.0  # vocabulary padding: would dominate if it were not left out
    target = torch.randint(0, vocab_size, shape, generator=gen)
    # Both shards own targets (when both hold real tokens), including each shard's first/last id.
    edges = sorted({0, SHARD - 1, SHARD, vocab_size - 1} & set(range(vocab_size)))
    target.view(-1)[: len(edges)] = torch.tensor(edges)
    target.view(-1)[4:8] = torch.tensor([1, 2, 3, 5])
    g_logp, g_entropy = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    return logits.to(dtype), target, g_logp, g_entropy


def _rel(ours, ref):
    return ((ours.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


def _run_case(rank, shape, dtype, temperature, chunk_size, grads, seed, tp_group=None,
              vocab_size=None):
    """Returns errors of (logp, entropy, grad) vs the reference, and our local gradient."""
    from policy_split_megatron.ops import logprobs_and_entropy

    logits, target, g_logp, g_entropy = _inputs(shape, dtype, seed, vocab_size or VOCAB)
    g_logp = g_logp if "logp" in grads else None
    g_entropy = g_entropy if "entropy" in grads else None
    local = logits[..., rank * SHARD:(rank + 1) * SHARD].clone().requires_grad_()
    logp, entropy = logprobs_and_entropy(
        local, target, tp_group=tp_group, temperature=temperature, chunk_size=chunk_size,
        vocab_size=vocab_size,
    )
    _loss(g_logp, logp, g_entropy, entropy).backward()
    ref_logp, ref_entropy, ref_grad = _reference(logits, target, temperature, g_logp, g_entropy,
                                                 vocab_size or VOCAB)
    ref_grad_local = ref_grad[..., rank * SHARD:(rank + 1) * SHARD]  # 0 on the padding
    assert logp.shape == entropy.shape == shape and logp.dtype == entropy.dtype == torch.float32
    assert local.grad.dtype == dtype and local.grad.shape == local.shape
    return {
        "logp": _rel(logp, ref_logp),
        "entropy": _rel(entropy, ref_entropy),
        "grad": _rel(local.grad, ref_grad_local),
        "outputs": (logp.detach(), entropy.detach(), local.grad),
    }


CASES = {
    "fp32_flat": dict(shape=(37,), dtype=torch.float32, temperature=1.0, chunk_size=None),
    "fp32_batch_seq_temp": dict(shape=(3, 7), dtype=torch.float32, temperature=0.7, chunk_size=4),
    "fp32_chunk_divides": dict(shape=(36,), dtype=torch.float32, temperature=0.7, chunk_size=9),
    "bf16_flat": dict(shape=(37,), dtype=torch.bfloat16, temperature=1.0, chunk_size=None),
    "bf16_batch_seq_temp_chunked": dict(shape=(3, 7), dtype=torch.bfloat16, temperature=0.7,
                                        chunk_size=5),
    "logp_grad_only": dict(shape=(37,), dtype=torch.float32, temperature=0.7, chunk_size=8,
                           grads=("logp",)),
    "entropy_grad_only": dict(shape=(3, 7), dtype=torch.float32, temperature=1.0, chunk_size=None,
                              grads=("entropy",)),
    # Megatron-padded vocabulary: rank 1 holds 8 real columns, then a shard of padding only.
    "fp32_padded_vocab_40": dict(shape=(37,), dtype=torch.float32, temperature=0.7, chunk_size=8,
                                 vocab_size=40),
    "fp32_padded_vocab_30": dict(shape=(3, 7), dtype=torch.float32, temperature=1.0,
                                 chunk_size=None, vocab_size=30),
}
CHUNK_SIZES = (1, 5, 16, 37, 100)
_COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor", "broadcast", "reduce_scatter")


def _all_cases(rank, world_size):
    """Runs every case on this rank; also counts the collectives the op issues."""
    from megatron.core import parallel_state

    calls = []
    originals = {name: getattr(dist, name) for name in _COLLECTIVES}

    def recording(name):
        def collective(tensor, *args, **kwargs):
            calls.append((name, tensor.numel()))
            return originals[name](tensor, *args, **kwargs)
        return collective

    results = {}
    for seed, (name, case) in enumerate(CASES.items()):
        case = {"grads": ("logp", "entropy"), **case}
        results[name] = _run_case(rank, seed=seed, **case)

    # Chunked == unchunked, chunk sizes that do and do not divide T = 37.
    def outputs(chunk_size, **kwargs):
        both = ("logp", "entropy")
        return _run_case(rank, (37,), torch.float32, 0.7, chunk_size, both, seed=11, **kwargs)

    def max_diff(ours, ref):
        return max((a - b).abs().max().item() for a, b in zip(ours["outputs"], ref["outputs"]))

    base = outputs(None)
    results["chunked_vs_unchunked"] = {cs: max_diff(outputs(cs), base) for cs in CHUNK_SIZES}

    # An explicit group gives the same result; count collectives: 2 all-reduces of per-token data.
    for name in _COLLECTIVES:
        setattr(dist, name, recording(name))
    try:
        explicit = outputs(8, tp_group=parallel_state.get_tensor_model_parallel_group())
    finally:
        for name, fn in originals.items():
            setattr(dist, name, fn)
    results["explicit_group_vs_default"] = max_diff(explicit, base)
    results["collectives"] = calls

    # Out-of-range targets fail before any collective (so no rank hangs), on every rank.
    from policy_split_megatron.ops import logprobs_and_entropy

    try:
        logprobs_and_entropy(torch.zeros(5, SHARD), torch.tensor([0, 1, 2, 3, VOCAB]))
        results["bad_target"] = "no error"
    except ValueError as err:
        results["bad_target"] = str(err)
    for v in results.values():
        if isinstance(v, dict):
            v.pop("outputs", None)
    return results


@pytest.fixture(scope="module")
def results():
    return run_distributed(_all_cases, TP, tp=TP)


@pytest.mark.parametrize("case", [c for c in CASES if c.startswith("fp32") or "only" in c])
def test_fp32_matches_float64_reference(results, case):
    for rank, res in enumerate(results):
        errors = res[case]
        assert max(errors.values()) <= 1e-5, f"rank {rank} {case}: {errors}"


@pytest.mark.parametrize("case", [c for c in CASES if c.startswith("bf16")])
def test_bf16_matches_reference_of_the_same_values(results, case):
    for rank, res in enumerate(results):
        errors = res[case]
        # fp32 math on exact bf16 values: outputs stay fp32-accurate; the gradient is bf16-rounded.
        assert errors["logp"] <= 1e-5 and errors["entropy"] <= 1e-5, f"rank {rank} {case}: {errors}"
        assert errors["grad"] <= 1e-2, f"rank {rank} {case}: {errors}"


def test_chunked_equals_unchunked(results):
    for rank, res in enumerate(results):
        diffs = res["chunked_vs_unchunked"]
        assert max(diffs.values()) <= 1e-6, (rank, diffs)


def test_explicit_group_and_two_small_collectives(results):
    for rank, res in enumerate(results):
        assert res["explicit_group_vs_default"] <= 1e-6
        # MAX of [T] then one packed SUM of [3, T]; nothing vocab-sized, nothing in backward.
        expected = [("all_reduce", 37), ("all_reduce", 3 * 37)]
        assert res["collectives"] == expected, (rank, res["collectives"])


def test_out_of_range_target_raises(results):
    for res in results:
        message = res["bad_target"]
        assert "target" in message and f"[0, {VOCAB})" in message, message
