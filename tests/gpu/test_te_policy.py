"""The Transformer Engine layer spec on CUDA against transformers (run on the GPU machine).

Same comparison as tests/distributed/test_policy_model.py, with the TE spec (fused layer-norm +
linear names, see bridge/families.py TE_ALIASES) instead of the CPU local spec. Skipped without
CUDA by tests/conftest.py.
"""

import os

import pytest
import torch

from policy_split_megatron.model.tiny import FAMILIES, save_random_hf_model


@pytest.mark.parametrize("family", FAMILIES)
def test_te_spec_matches_transformers(tmp_path, family):
    pytest.importorskip("transformer_engine")
    from transformers import AutoConfig, AutoModelForCausalLM

    from policy_split_megatron.bridge import SafetensorsSource, export_hf_weights, load_hf_weights
    from policy_split_megatron.distributed import ParallelLayout, destroy_distributed, free_port, init_distributed
    from policy_split_megatron.model import architecture_from_hf, build_policy_model, forward_logits

    os.environ["MASTER_PORT"] = str(free_port())
    init_distributed(ParallelLayout(), rank=0, world_size=1, backend="nccl")
    try:
        folder = save_random_hf_model(family, tmp_path / family)
        arch = architecture_from_hf(AutoConfig.from_pretrained(folder))
        model = build_policy_model(arch, use_transformer_engine=True)
        assert any("layer_norm_weight" in n for n, _ in model.named_parameters()), "not the TE spec"
        source = SafetensorsSource(folder)
        load_hf_weights(model, arch, {k: v.cuda() for k, v in source.items()})
        ids = torch.randint(0, arch.vocab_size, (2, 31), device="cuda")
        with torch.no_grad():
            ref = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).cuda()(ids).logits
            out = forward_logits(model, ids, arch)[..., : arch.vocab_size]
        # TF32 matmuls on Hopper: a looser bound than the CPU's 1e-4.
        assert (out - ref).abs().max().item() <= 5e-3
        exported = dict(export_hf_weights(model, arch))
        assert all(torch.equal(exported[n].cpu(), source[n]) for n in source)
    finally:
        destroy_distributed()
