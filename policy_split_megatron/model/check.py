"""`policy-split check`: build each supported family from a random tiny HF model, load it into the
Megatron policy at TP=1 and TP=2 (real gloo processes), and compare against transformers.

It is the quickest way to see that this installation works end to end on the machine at hand:
logits, vocab-parallel log-probs/entropy, and the HF round trip, one table row per case.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from policy_split_megatron.distributed import ParallelLayout, spawn_local


def _check_rank(rank: int, world_size: int, folder: str) -> dict:
    from megatron.core import parallel_state as ps
    from transformers import AutoConfig, AutoModelForCausalLM

    from policy_split_megatron.bridge import SafetensorsSource, export_hf_weights, load_hf_weights
    from policy_split_megatron.model import architecture_from_hf, build_policy_model
    from policy_split_megatron.model.builder import forward_logits
    from policy_split_megatron.ops.vocab_parallel import logprobs_and_entropy

    arch = architecture_from_hf(AutoConfig.from_pretrained(folder))
    model = build_policy_model(arch)
    source = SafetensorsSource(folder)
    load_hf_weights(model, arch, source)
    ids = torch.randint(0, arch.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)(ids).logits
        logits = forward_logits(model, ids, arch)
        logprobs, entropy = logprobs_and_entropy(logits[:, :-1], ids[:, 1:], vocab_size=arch.vocab_size)
    tp_rank, width = ps.get_tensor_model_parallel_rank(), logits.shape[-1]
    valid = max(0, min(width, arch.vocab_size - tp_rank * width))
    logit_err = (logits[..., :valid] - reference[..., tp_rank * width : tp_rank * width + valid]).abs().max()
    ref_logp = torch.log_softmax(reference.double(), -1)[:, :-1]
    ref_tok = ref_logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
    ref_ent = -(ref_logp.exp() * ref_logp).sum(-1)
    exported = dict(export_hf_weights(model, arch))
    exact = all(torch.equal(exported[name], source[name]) for name in source) and len(exported) == len(source)
    return {
        "family": arch.family,
        "tied": arch.tie_word_embeddings,
        "logit_err": float(logit_err),
        "logprob_err": float((logprobs.double() - ref_tok).abs().max()),
        "entropy_err": float((entropy.double() - ref_ent).abs().max()),
        "round_trip_exact": exact,
    }


def run_model_check(families=("llama", "qwen2", "qwen3"), tensor_parallel=(1, 2), tolerance: float = 1e-4) -> bool:
    """Run the check, print a table, return True when every case is within `tolerance`."""
    from tqdm import tqdm

    from policy_split_megatron.model.tiny import save_random_hf_model

    cases = [(family, tp) for family in families for tp in tensor_parallel]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folders = {f: str(save_random_hf_model(f, Path(tmp) / f, tie_word_embeddings=(f == "qwen2"))) for f in families}
        for family, tp in tqdm(cases, desc="model check", unit="case"):
            result = spawn_local(_check_rank, tp, ParallelLayout(tensor_parallel=tp), folders[family], quiet=True)
            worst = {k: max(r[k] for r in result) for k in ("logit_err", "logprob_err", "entropy_err")}
            exact = all(r["round_trip_exact"] for r in result)
            rows.append((family, tp, result[0]["tied"], worst, exact))
    header = f"{'family':<8}{'TP':>3}{'tied':>6}{'max|logit diff|':>17}{'max|logp diff|':>16}{'max|H diff|':>13}  HF round trip"
    print(header)
    print("-" * len(header))
    ok = True
    for family, tp, tied, worst, exact in rows:
        passed = exact and all(v <= tolerance for v in worst.values())
        ok &= passed
        print(
            f"{family:<8}{tp:>3}{str(tied):>6}{worst['logit_err']:>17.2e}{worst['logprob_err']:>16.2e}"
            f"{worst['entropy_err']:>13.2e}  {'exact' if exact else 'MISMATCH'}{'' if passed else '  <- FAIL'}"
        )
    print(f"model check {'passed' if ok else 'FAILED'}: Megatron vs transformers, tolerance {tolerance:g} (fp32, CPU)")
    return ok
