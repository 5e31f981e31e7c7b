"""Pipeline stages against an independent reference: the two stages' forward and backward run by
hand with point-to-point sends over gloo (no schedule), and megatron-core's DDP applies its
cross-rank gradient rules (the tied-embedding sum over stages); logits and gradients are compared
with transformers' on the unsplit model. The trainer's path, megatron-core's 1F1B schedule, is
checked against PP=1 in test_engine_pipeline.py. It also checks that the name table follows the
stages' layer offsets: export from a PP split reproduces every tensor."""

import pytest
import torch
import torch.distributed as dist

from policy_split_megatron.model.tiny import save_random_hf_model
from tests.helpers.distributed import run_distributed


def _run_split(rank, world_size, folder, expect_tp):
    from megatron.core import parallel_state as ps
    from transformers import AutoConfig

    from policy_split_megatron.bridge import SafetensorsSource, export_hf_weights, load_hf_weights
    from policy_split_megatron.model import architecture_from_hf, build_policy_model
    from tests.helpers.reference import (
        hf_logits_and_grads,
        local_vocab_slice,
        max_relative_grad_error,
        reduce_gradients,
        wrap_for_gradients,
    )

    assert ps.get_tensor_model_parallel_world_size() == expect_tp
    arch = architecture_from_hf(AutoConfig.from_pretrained(folder))
    model = build_policy_model(arch)
    source = SafetensorsSource(folder)
    load_hf_weights(model, arch, source)
    wrapped = wrap_for_gradients(model)  # megatron-core's DDP applies the cross-rank gradient rules
    stage = ps.get_pipeline_model_parallel_rank()
    owned_layers = sorted(layer.layer_number - 1 for layer in model.decoder.layers)

    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(0, arch.vocab_size, (2, 13), generator=gen)
    upstream = torch.randn(2, 13, arch.vocab_size, generator=gen)
    ref_logits, ref_grads = hf_logits_and_grads(folder, ids, upstream)
    positions = torch.arange(13).unsqueeze(0).expand(2, -1)
    hidden_shape = (13, 2, arch.hidden_size)  # megatron's [s, b, h]
    pp_group = ps.get_pipeline_model_parallel_group()
    next_rank = dist.get_global_rank(pp_group, 1)
    prev_rank = dist.get_global_rank(pp_group, 0)

    logit_err = None
    if ps.is_pipeline_first_stage():
        hidden = model(input_ids=ids, position_ids=positions, attention_mask=None)
        assert hidden.shape == hidden_shape
        dist.send(hidden.detach().contiguous(), dst=next_rank)
        grad = torch.empty(hidden_shape)
        dist.recv(grad, src=next_rank)
        hidden.backward(grad)
    else:
        received = torch.empty(hidden_shape)
        dist.recv(received, src=prev_rank)
        received.requires_grad_(True)
        model.set_input_tensor(received)
        logits = model(input_ids=ids, position_ids=positions, attention_mask=None)
        width = logits.shape[-1]
        tp_rank = ps.get_tensor_model_parallel_rank()
        valid = max(0, min(width, arch.vocab_size - tp_rank * width))
        expected = local_vocab_slice(ref_logits, tp_rank, width)
        logit_err = (logits[..., :valid] - expected[..., :valid]).abs().max().item()
        (logits * local_vocab_slice(upstream, tp_rank, width)).sum().backward()
        dist.send(received.grad.contiguous(), dst=prev_rank)
    reduce_gradients(wrapped)
    grad_err = max_relative_grad_error(model, arch, ref_grads)

    exported = dict(export_hf_weights(model, arch))
    mismatched = [n for n in source if not torch.equal(exported.get(n, torch.empty(0)), source[n])]
    return dict(stage=stage, layers=owned_layers, logit_err=logit_err, grad_err=grad_err,
                mismatched=mismatched, extra=sorted(set(exported) - set(source)))


@pytest.mark.parametrize("family,tied,tp", [("qwen3", False, 1), ("qwen2", True, 1), ("llama", True, 2)])
def test_two_stage_split_matches_unsplit(tmp_path, family, tied, tp):
    folder = str(save_random_hf_model(family, tmp_path / family, seed=5, tie_word_embeddings=tied))
    results = run_distributed(_run_split, 2 * tp, folder, tp, tp=tp, pp=2)
    by_stage = {}
    for r in results:
        by_stage.setdefault(r["stage"], r)
        assert r["grad_err"] <= 1e-4, f"stage {r['stage']}: gradients differ by {r['grad_err']:.2e} (relative)"
        assert not r["mismatched"], f"stage {r['stage']}: export from the split changed {r['mismatched'][:3]}"
        assert not r["extra"], f"stage {r['stage']}: export invented {r['extra'][:3]}"
    assert by_stage[0]["layers"] == [0, 1] and by_stage[1]["layers"] == [2, 3]
    assert by_stage[1]["logit_err"] <= 1e-4, f"last-stage logits differ by {by_stage[1]['logit_err']:.2e}"
