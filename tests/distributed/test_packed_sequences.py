"""Packed sequences (THD, cu_seqlens) against the unpacked reference, at TP=1 and TP=2, for Qwen3
(QK-norm) and tied-embedding Qwen2 (QKV bias): every row run alone through the same model, without
padding, gives the per-token log-probs, entropies and parameter gradients that the packed micro-batch
gives (fp32, <= 1e-5). A packed forward that let attention or RoPE positions cross row boundaries
fails this (rows here start with different tokens and have different lengths)."""

import pytest
import torch

from policy_split_megatron.model.tiny import save_random_hf_model
from tests.helpers.distributed import run_distributed

LENGTHS = [7, 12, 3, 9]


def _compare(rank, world_size, folder):
    from transformers import AutoConfig

    from policy_split_megatron.bridge import SafetensorsSource, load_hf_weights
    from policy_split_megatron.engine.packing import build_pack
    from policy_split_megatron.model import architecture_from_hf, build_policy_model, forward_logits
    from policy_split_megatron.ops import logprobs_and_entropy

    arch = architecture_from_hf(AutoConfig.from_pretrained(folder))
    model = build_policy_model(arch)
    load_hf_weights(model, arch, SafetensorsSource(folder))
    device = next(model.parameters()).device  # the CPU here; the GPU in tests/gpu
    gen = torch.Generator().manual_seed(5)
    lengths = torch.tensor(LENGTHS)
    ids = torch.randint(0, arch.vocab_size, (len(LENGTHS), max(LENGTHS)), generator=gen).to(device)
    weights = torch.randn(len(LENGTHS), max(LENGTHS), generator=gen).to(device)  # an arbitrary per-token upstream

    def grads():
        out = {n: p.grad.clone() for n, p in model.named_parameters()}
        model.zero_grad(set_to_none=True)
        return out

    # Reference: each row alone, no padding, no packing.
    ref_logp, ref_ent = torch.zeros(ids.shape, device=device), torch.zeros(ids.shape, device=device)
    total = 0.0
    for r, n in enumerate(LENGTHS):
        row = ids[r : r + 1, :n]
        lp, ent = logprobs_and_entropy(forward_logits(model, row, arch)[:, :-1], row[:, 1:], vocab_size=arch.vocab_size)
        ref_logp[r, 1:n], ref_ent[r, 1:n] = lp[0].detach(), ent[0].detach()
        total = total + (lp[0] * weights[r, 1:n]).sum() + (ent[0] * weights[r, 1:n]).sum() * 0.5
    total.backward()
    ref_grads = grads()

    pack = build_pack(ids.cpu(), lengths, list(range(len(LENGTHS)))).to(device)
    logits = model(input_ids=pack.input_ids, position_ids=pack.position_ids, attention_mask=None,
                   packed_seq_params=pack.seq_params())
    lp, ent = logprobs_and_entropy(logits, pack.next_ids, vocab_size=arch.vocab_size)
    logp, entropy = pack.align_to_rows(lp), pack.align_to_rows(ent)
    ((logp * weights).sum() + (entropy * weights).sum() * 0.5).backward()
    packed_grads = grads()
    grad_err = max((packed_grads[n] - ref_grads[n]).abs().max().item() / (ref_grads[n].abs().max().item() + 1e-6)
                   for n in ref_grads)
    return ((logp.detach() - ref_logp).abs().max().item(), (entropy.detach() - ref_ent).abs().max().item(), grad_err,
            ref_logp.abs().max().item())


@pytest.mark.parametrize("family,tied", [("qwen3", False), ("qwen2", True)])
@pytest.mark.parametrize("tp", [1, 2])
def test_packed_equals_unpacked(tmp_path, family, tied, tp):
    folder = str(save_random_hf_model(family, tmp_path / family, seed=6, tie_word_embeddings=tied))
    for rank, (logp_err, ent_err, grad_err, scale) in enumerate(run_distributed(_compare, tp, folder, tp=tp)):
        where = f"{family} TP={tp} rank {rank}"
        assert scale > 1.0, "the reference log-probs are trivial: the comparison is void"
        assert logp_err <= 1e-5, f"{where}: packed log-probs differ by {logp_err:.2e}"
        assert ent_err <= 1e-5, f"{where}: packed entropies differ by {ent_err:.2e}"
        assert grad_err <= 1e-5, f"{where}: packed gradients differ by {grad_err:.2e} (relative)"
