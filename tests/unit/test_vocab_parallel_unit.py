"""Single-process (TP = 1) checks of `logprobs_and_entropy` against a float64 full-vocab autograd
reference, plus input validation. The TP = 2 behaviour is covered in
tests/distributed/test_vocab_parallel.py.

Errors are measured as max|ours - ref| / max|ref| over the whole tensor ("max-normalised error"):
it is scale-free and, unlike an elementwise relative error, does not blow up on entries that are
legitimately ~0 (e.g. gradients of vocab entries with negligible probability).
"""

from __future__ import annotations

import pytest
import torch

from policy_split_megatron.ops import logprobs_and_entropy

VOCAB = 64


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


def reference(logits, target, temperature, g_logp, g_entropy):
    """Full-vocab float64 autograd: log_softmax, gather, -(p log p).sum; loss = g1.logp + g2.H."""
    z = logits.detach().double().requires_grad_()
    logp_all = torch.log_softmax(z / temperature, dim=-1)
    logp = logp_all.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    loss = 0.0
    if g_logp is not None:
        loss = loss + (g_logp.double() * logp).sum()
    if g_entropy is not None:
        loss = loss + (g_entropy.double() * entropy).sum()
    if isinstance(loss, torch.Tensor):
        loss.backward()
    return logp.detach(), entropy.detach(), z.grad


def make_inputs(shape, dtype, seed=0, scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(*shape, VOCAB, generator=gen) * scale).to(dtype)
    target = torch.randint(0, VOCAB, shape, generator=gen)
    target.view(-1)[:2] = torch.tensor([0, VOCAB - 1])  # the edges of the vocabulary
    g1, g2 = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    return logits, target, g1, g2


def run_ours(logits, target, temperature, chunk_size, g_logp, g_entropy):
    z = logits.clone().requires_grad_()
    logp, entropy = logprobs_and_entropy(z, target, temperature=temperature, chunk_size=chunk_size)
    loss = 0.0
    if g_logp is not None:
        loss = loss + (g_logp * logp).sum()
    if g_entropy is not None:
        loss = loss + (g_entropy * entropy).sum()
    loss.backward()
    return logp.detach(), entropy.detach(), z.grad


@pytest.mark.parametrize("shape", [(37,), (3, 7)], ids=["flat", "batch_seq"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("chunk_size", [None, 5, 7, 1000])
def test_fp32_matches_float64_reference(shape, temperature, chunk_size):
    logits, target, g1, g2 = make_inputs(shape, torch.float32)
    logp, entropy, grad = run_ours(logits, target, temperature, chunk_size, g1, g2)
    ref_logp, ref_entropy, ref_grad = reference(logits, target, temperature, g1, g2)
    assert logp.dtype == entropy.dtype == torch.float32 and logp.shape == shape
    assert grad.dtype == torch.float32 and grad.shape == logits.shape
    assert rel_err(logp, ref_logp) <= 1e-5
    assert rel_err(entropy, ref_entropy) <= 1e-5
    assert rel_err(grad, ref_grad) <= 1e-5


@pytest.mark.parametrize("chunk_size", [None, 8])
def test_bf16_matches_reference_of_the_same_values(chunk_size):
    logits, target, g1, g2 = make_inputs((3, 7), torch.bfloat16)
    logp, entropy, grad = run_ours(logits, target, 0.7, chunk_size, g1, g2)
    ref_logp, ref_entropy, ref_grad = reference(logits, target, 0.7, g1, g2)
    assert logp.dtype == torch.float32 and grad.dtype == torch.bfloat16
    # Outputs are computed in fp32 from the exact bf16 values; only the gradient is rounded to bf16.
    assert rel_err(logp, ref_logp) <= 1e-5
    assert rel_err(entropy, ref_entropy) <= 1e-5
    assert rel_err(grad, ref_grad) <= 1e-2


@pytest.mark.parametrize("which", ["logp_only", "entropy_only"])
def test_single_output_gradient(which):
    logits, target, g1, g2 = make_inputs((37,), torch.float32)
    g_logp, g_entropy = (g1, None) if which == "logp_only" else (None, g2)
    _, _, grad = run_ours(logits, target, 0.7, 5, g_logp, g_entropy)
    _, _, ref_grad = reference(logits, target, 0.7, g_logp, g_entropy)
    assert rel_err(grad, ref_grad) <= 1e-5


def test_chunked_equals_unchunked():
    logits, target, g1, g2 = make_inputs((37,), torch.float32, seed=3)
    full = run_ours(logits, target, 0.7, None, g1, g2)
    for chunk_size in (1, 4, 37, 64):
        for a, b in zip(run_ours(logits, target, 0.7, chunk_size, g1, g2), full):
            assert (a - b).abs().max().item() <= 1e-6, chunk_size


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_large_logits_are_stable(temperature):
    logits, target, g1, g2 = make_inputs((37,), torch.float32, scale=300.0)
    logits += 1000.0  # exp() of any value not shifted by max(z / T) overflows fp32
    logp, entropy, grad = run_ours(logits, target, temperature, None, g1, g2)
    ref_logp, ref_entropy, ref_grad = reference(logits, target, temperature, g1, g2)
    assert all(torch.isfinite(t).all() for t in (logp, entropy, grad))
    assert rel_err(logp, ref_logp) <= 1e-5
    assert (entropy - ref_entropy).abs().max().item() <= 1e-4  # entropies here are ~0
    assert rel_err(grad, ref_grad) <= 1e-5


def test_non_contiguous_logits_and_no_grad():
    logits, target, g1, g2 = make_inputs((7, 3), torch.float32)
    logits_t, target_t = logits.transpose(0, 1), target.transpose(0, 1)  # [3, 7, V], not contiguous
    ref_logp, ref_entropy, ref_grad = reference(logits_t, target_t, 1.0, g1.T, g2.T)
    logp, entropy, grad = run_ours(logits_t, target_t, 1.0, 4, g1.T, g2.T)
    assert rel_err(grad, ref_grad) <= 1e-5 and grad.shape == logits_t.shape
    with torch.no_grad():
        logp, entropy = logprobs_and_entropy(logits_t, target_t)
    assert rel_err(logp, ref_logp) <= 1e-5 and rel_err(entropy, ref_entropy) <= 1e-5


@pytest.mark.parametrize("chunk_size", [None, 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_padded_vocabulary_is_left_out(chunk_size, dtype):
    logits, _, g1, g2 = make_inputs((37,), dtype)
    real = 50
    logits[:, real:] = 40.0  # padding columns that would dominate the softmax
    target = torch.randint(0, real, (37,), generator=torch.Generator().manual_seed(1))
    target[:2] = torch.tensor([0, real - 1])
    z = logits.clone().requires_grad_()
    logp, entropy = logprobs_and_entropy(z, target, temperature=0.7, chunk_size=chunk_size,
                                         vocab_size=real)
    ((g1 * logp).sum() + (g2 * entropy).sum()).backward()
    ref_logp, ref_entropy, ref_grad = reference(logits[:, :real], target, 0.7, g1, g2)
    assert rel_err(logp, ref_logp) <= 1e-5 and rel_err(entropy, ref_entropy) <= 1e-5
    assert rel_err(z.grad[:, :real], ref_grad) <= (1e-5 if dtype == torch.float32 else 1e-2)
    assert (z.grad[:, real:] == 0).all()


def test_int32_targets_are_accepted():
    logits, target, _, _ = make_inputs((37,), torch.float32)
    logp, _ = logprobs_and_entropy(logits, target.int())
    assert rel_err(logp, reference(logits, target, 1.0, None, None)[0]) <= 1e-5


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(target=torch.zeros(36, dtype=torch.long)), ValueError, "target shape"),
        (dict(target=torch.zeros(37)), TypeError, "target must hold integer"),
        (dict(target=torch.full((37,), VOCAB)), ValueError, "target holds token ids"),
        (dict(target=torch.full((37,), -1)), ValueError, "target holds token ids"),
        (dict(logits=torch.zeros(37, VOCAB, dtype=torch.long)), TypeError, "logits must be"),
        (dict(logits=torch.zeros(37, 0)), ValueError, "logits must have"),
        (dict(temperature=0.0), ValueError, "temperature"),
        (dict(temperature=float("nan")), ValueError, "temperature"),
        (dict(temperature="1"), TypeError, "temperature"),
        (dict(chunk_size=0), ValueError, "chunk_size"),
        (dict(chunk_size=2.5), TypeError, "chunk_size"),
        (dict(tp_group="tp"), TypeError, "tp_group"),
        (dict(vocab_size=0), ValueError, "vocab_size"),
        (dict(vocab_size=VOCAB + 1), ValueError, "vocab_size"),
        (dict(vocab_size=32.0), TypeError, "vocab_size"),
        (dict(vocab_size=32, target=torch.full((37,), 32)), ValueError, "target holds token ids"),
    ],
)
def test_bad_inputs_name_the_input(kwargs, error, match):
    args = dict(logits=torch.zeros(37, VOCAB), target=torch.zeros(37, dtype=torch.long))
    args.update(kwargs)
    logits, target = args.pop("logits"), args.pop("target")
    with pytest.raises(error, match=match):
        logprobs_and_entropy(logits, target, **args)


def _peak_extra_bytes(fn) -> int:
    """Peak of CPU tensor memory allocated while fn runs (the profiler's allocator accounting)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    peak = running = 0
    for event in sorted(prof.profiler.kineto_results.events(), key=lambda e: e.start_ns()):
        if event.name() == "[memory]":
            running += event.nbytes()
            peak = max(peak, running)
    return peak


@pytest.mark.parametrize("grads", [("logp", "entropy"), ("logp",)])
def test_memory_is_bounded_by_one_chunk(grads):
    """bf16 [512, 2048] input: no full fp32 copy in either pass, only [chunk, V] fp32 buffers."""
    tokens, vocab, chunk = 512, 2048, 32
    logits = torch.randn(tokens, vocab).bfloat16().requires_grad_()
    target = torch.randint(0, vocab, (tokens,))

    def step():
        logp, entropy = logprobs_and_entropy(logits, target, chunk_size=chunk)
        loss = logp.sum() + (entropy.sum() if "entropy" in grads else 0.0)
        loss.backward()
        logits.grad = None

    step()  # warm-up outside the profiler
    grad_bytes = tokens * vocab * 2
    chunk_buffers = 2 if "entropy" in grads else 1  # fp32 [chunk, V] in backward (bf16 input)
    budget = grad_bytes + chunk_buffers * chunk * vocab * 4 + 64 * tokens * 4  # + per-token vectors
    peak = _peak_extra_bytes(step)
    assert peak <= budget, (peak, budget)
    assert peak >= grad_bytes  # sanity: the measurement sees the gradient
