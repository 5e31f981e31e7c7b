"""Small pieces shared by the engine tests: a PolicyEngine from an HF folder, a fixed batch of
rows with a data-parallel share per rank, and a token-mean NLL loss for PolicyEngine.train_step."""

from __future__ import annotations

import torch

LENGTHS = [14, 9, 12, 6, 14, 11, 8, 13]


def build_engine(folder, *, params_dtype=torch.float32, trainable=True, total_steps=3, recompute="none", **optimizer):
    from transformers import AutoConfig

    from policy_split_megatron.bridge import SafetensorsSource
    from policy_split_megatron.engine import OptimizerConfig, PolicyEngine
    from policy_split_megatron.model import architecture_from_hf
    from policy_split_megatron.model.builder import recompute_overrides

    arch = architecture_from_hf(AutoConfig.from_pretrained(folder))
    engine = PolicyEngine(arch, params_dtype=params_dtype, trainable=trainable,
                          optimizer=OptimizerConfig(**{"lr": 1e-3, **optimizer}), **recompute_overrides(recompute))
    engine.load_hf_weights(SafetensorsSource(folder))
    if trainable:
        engine.build_optimizer(total_steps=total_steps)
    return engine


def batch(vocab_size: int, seed: int, lengths=LENGTHS) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids [B, L], lengths [B]) of random tokens, right-padded with 0."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths)
    ids = torch.randint(1, vocab_size, (len(lengths), int(lengths.max())), generator=gen)
    ids[torch.arange(ids.shape[1]) >= lengths[:, None]] = 0
    return ids, lengths


def my_rows(num_rows: int) -> list[int]:
    """This data-parallel rank's rows: a contiguous share (uneven when DP does not divide)."""
    from megatron.core import parallel_state as ps

    from policy_split_megatron.rollout.layout import shard_bounds

    lo, hi = shard_bounds(num_rows, ps.get_data_parallel_world_size(), ps.get_data_parallel_rank())
    return list(range(lo, hi))


def response_mask(lengths: torch.Tensor, width: int, prompt: int = 4) -> torch.Tensor:
    positions = torch.arange(width)
    return (positions >= prompt) & (positions < lengths[:, None])


def nll(mask: torch.Tensor):
    """loss_fn: token-mean negative log-likelihood over `mask` ([B, L] of the whole batch)."""

    def loss_fn(pack, log_probs, entropy):
        m = pack.gather_rows(mask.to(log_probs.device))
        value = -(log_probs * m).sum()
        return value, m.sum(), {"nll": value.detach(), "tokens": m.sum().double()}

    return loss_fn


def train(engine, ids, lengths, mask, *, steps: int, token_budget: int = 30, first_step: int = 0) -> list[float]:
    """`steps` optimizer steps on this rank's rows of the batch; the grad norms."""
    from policy_split_megatron.engine import dummy_pack, pack_batch

    rows = my_rows(len(lengths))
    norms = []
    for step in range(first_step, first_step + steps):
        packs = pack_batch(ids, lengths, token_budget, engine.alignment, rows=rows) if rows else [dummy_pack()]
        norm, _ = engine.train_step([p.to(engine.device) for p in packs], nll(mask), step_index=step)
        norms.append(norm)
    return norms


def full_weights(engine) -> dict[str, torch.Tensor]:
    """Every HF tensor of the policy (gathered over TP and PP), fp32 clones."""
    from policy_split_megatron.bridge import export_hf_weights

    return {n: t.detach().float().clone() for n, t in export_hf_weights(engine.modules, engine.arch)}
