"""The Megatron policy against transformers, at TP=1 and TP=2 over real gloo process groups:
logits and parameter gradients match, and export(import(hf)) reproduces every tensor exactly."""

import pytest
import torch

from policy_split_megatron.model.tiny import FAMILIES, save_random_hf_model
from tests.helpers.distributed import run_distributed

# (family, tied embeddings): Qwen2 runs tied, as Qwen2.5-0.5B/1.5B ship; vocab 211 is never a
# multiple of the TP size, so every case also exercises vocabulary padding.
CASES = [("llama", False), ("qwen2", True), ("qwen3", False), ("qwen3", True)]
LOGIT_TOL = 1e-4
GRAD_TOL = 1e-4


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {
        case: str(save_random_hf_model(case[0], root / f"{case[0]}-tied{case[1]}", seed=i, tie_word_embeddings=case[1]))
        for i, case in enumerate(CASES)
    }


def _check_against_hf(rank, world_size, folders):
    from megatron.core import parallel_state as ps
    from transformers import AutoConfig

    from policy_split_megatron.bridge import SafetensorsSource, export_hf_weights, load_hf_weights
    from policy_split_megatron.model import architecture_from_hf, build_policy_model
    from policy_split_megatron.model.builder import forward_logits
    from tests.helpers.reference import (
        hf_logits_and_grads,
        local_vocab_slice,
        max_relative_grad_error,
        reduce_gradients,
        wrap_for_gradients,
    )

    tp_rank, tp = ps.get_tensor_model_parallel_rank(), ps.get_tensor_model_parallel_world_size()
    report = {}
    for case, folder in folders.items():
        arch = architecture_from_hf(AutoConfig.from_pretrained(folder))
        model = build_policy_model(arch)
        source = SafetensorsSource(folder)
        load_hf_weights(model, arch, source)
        wrapped = wrap_for_gradients(model)  # megatron-core's DDP applies the cross-rank gradient rules

        gen = torch.Generator().manual_seed(1)
        ids = torch.randint(0, arch.vocab_size, (2, 19), generator=gen)
        upstream = torch.randn(2, 19, arch.vocab_size, generator=gen)
        ref_logits, ref_grads = hf_logits_and_grads(folder, ids, upstream)

        logits = forward_logits(model, ids, arch)
        width = logits.shape[-1]
        valid = max(0, min(width, arch.vocab_size - tp_rank * width))
        expected = local_vocab_slice(ref_logits, tp_rank, width)
        logit_err = (logits[..., :valid] - expected[..., :valid]).abs().max().item()

        (logits * local_vocab_slice(upstream, tp_rank, width)).sum().backward()
        reduce_gradients(wrapped)
        grad_err = max_relative_grad_error(model, arch, ref_grads)

        exported = dict(export_hf_weights(model, arch))
        mismatched = [n for n in source if not torch.equal(exported.get(n, torch.empty(0)), source[n])]
        extra = sorted(set(exported) - set(source))
        report[case] = (logit_err, grad_err, mismatched, extra)
    return report


@pytest.mark.parametrize("tp", [1, 2])
def test_megatron_matches_transformers(hf_folders, tp):
    reports = run_distributed(_check_against_hf, tp, hf_folders, tp=tp)
    for rank, report in enumerate(reports):
        for case, (logit_err, grad_err, mismatched, extra) in report.items():
            where = f"{case} TP={tp} rank {rank}"
            assert logit_err <= LOGIT_TOL, f"{where}: logits differ by {logit_err:.2e}"
            assert grad_err <= GRAD_TOL, f"{where}: gradients differ by {grad_err:.2e} (relative)"
            assert not mismatched, f"{where}: export changed {mismatched[:3]}"
            assert not extra, f"{where}: export invented {extra[:3]}"
