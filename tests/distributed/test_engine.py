"""megatron-core's engine (DDP, distributed optimizer, pipeline schedule, packed micro-batches, mixed
precision) against independent references, on real gloo groups:

- 3 updates at DP=2 with the distributed optimizer (uneven split: 5 + 3 rows) equal a one-process
  reference: the unsplit model, unpacked padded rows, torch.optim.AdamW with megatron-core's
  weight-decay rule and clip_grad_norm_ (fp32, <= 1e-5);
- a rank with no rows at all (1 row over DP=2) reaches every collective and gives the DP=1 update;
- one update at PP=2 and at TP=2 x PP=2 (1F1B schedule) equals the PP=1 update: loss, grad norm and
  every parameter;
- bf16 parameters with fp32 main parameters: losses within 3e-3 (relative) of the fp32 run over 3
  updates; and at the paper's lr (3e-6) the updates survive bf16 rounding, which plain AdamW on
  bf16 weights does not (the test fails without fp32 main parameters);
- a NaN on one rank skips the step on every rank and leaves the weights untouched.
"""

import pytest
import torch

from policy_split_megatron.model.tiny import save_random_hf_model
from tests.helpers.distributed import run_distributed
from tests.helpers.engine import LENGTHS, batch, build_engine, full_weights, response_mask, train

LR, STEPS = 1e-3, 3
EPS = 1e-6  # Adam's epsilon in both runs. Its first step is lr * g / (|g| + eps): with the default 1e-8,
# float noise in gradients of magnitude ~eps (packed vs padded summation order) moves a weight by a
# good fraction of lr. 1e-6 bounds that amplification (lr / eps) without hiding a wrong update.


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return str(save_random_hf_model("qwen3", tmp_path_factory.mktemp("engine") / "hf", seed=4))


def _engine_run(rank, world_size, folder, lengths, steps, params_dtype=torch.float32, **optimizer):
    engine = build_engine(folder, params_dtype=params_dtype, total_steps=steps, **{"eps": EPS, **optimizer})
    ids, lens = batch(engine.arch.vocab_size, seed=0, lengths=lengths)
    norms = train(engine, ids, lens, response_mask(lens, ids.shape[1]), steps=steps)
    return norms, full_weights(engine), type(engine.optimizer.chained_optimizers[0]).__name__


def _reference_run(rank, world_size, folder, lengths, steps):
    """One process, no DDP, no packing, no megatron optimizer: padded rows through the same
    GPTModel class and torch's AdamW."""
    from transformers import AutoConfig

    from policy_split_megatron.bridge import SafetensorsSource, export_hf_weights, load_hf_weights
    from policy_split_megatron.model import architecture_from_hf, build_policy_model, forward_logits
    from policy_split_megatron.ops import logprobs_and_entropy

    arch = architecture_from_hf(AutoConfig.from_pretrained(folder))
    model = build_policy_model(arch)
    load_hf_weights(model, arch, SafetensorsSource(folder))
    named = [(n, p) for n, p in model.named_parameters()]
    no_decay = [p for n, p in named if n.endswith(".bias") or p.ndim == 1]  # megatron-core's rule
    decay = [p for n, p in named if not (n.endswith(".bias") or p.ndim == 1)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=LR, betas=(0.9, 0.999), eps=EPS)
    ids, lens = batch(arch.vocab_size, seed=0, lengths=lengths)
    mask = response_mask(lens, ids.shape[1])[:, 1:]
    norms = []
    for _ in range(steps):
        optimizer.zero_grad()
        logp, _ = logprobs_and_entropy(forward_logits(model, ids, arch)[:, :-1], ids[:, 1:], vocab_size=arch.vocab_size)
        (-(logp * mask).sum() / mask.sum()).backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        optimizer.step()
    return norms, {n: t.detach().clone() for n, t in export_hf_weights(model, arch)}


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_distributed_optimizer_at_dp2_equals_one_process_adamw(folder):
    lengths = LENGTHS
    ref_norms, ref_weights = run_distributed(_reference_run, 1, folder, lengths, STEPS, tp=1)[0]
    # 8 rows at DP=2 (4 + 4), and 7 rows (4 + 3: an uneven split) against their own reference
    for rows in (lengths, lengths[:7]):
        if rows is not lengths:
            ref_norms, ref_weights = run_distributed(_reference_run, 1, folder, rows, STEPS, tp=1)[0]
        results = run_distributed(_engine_run, 2, folder, rows, STEPS, tp=1)
        for rank, (norms, weights, kind) in enumerate(results):
            assert kind == "DistributedOptimizer", kind
            assert all(abs(a - b) <= 1e-5 * b for a, b in zip(norms, ref_norms)), (rank, norms, ref_norms)
            assert _max_diff(weights, ref_weights) <= 1e-5, f"{len(rows)} rows, rank {rank}"
    moved = _max_diff(ref_weights, run_distributed(_engine_run, 1, folder, lengths, 0, tp=1)[0][1])
    assert moved > LR, f"the reference updates barely moved the weights ({moved:.2e}): the comparison is void"


def test_a_rank_without_rows_still_trains_with_its_peers(folder):
    one_row = LENGTHS[:1]
    dp1 = run_distributed(_engine_run, 1, folder, one_row, 2, tp=1)[0]
    dp2 = run_distributed(_engine_run, 2, folder, one_row, 2, tp=1, timeout=300)  # rank 1 holds no row
    for norms, weights, _ in dp2:
        assert all(abs(a - b) <= 1e-5 * b for a, b in zip(norms, dp1[0]))
        assert _max_diff(weights, dp1[1]) <= 1e-6


@pytest.mark.parametrize("tp,pp,vpp", [(1, 2, None), (2, 2, None), (1, 2, 2)])
def test_pipeline_update_equals_pp1(folder, tp, pp, vpp):
    """1F1B at PP=2 and TP=2 x PP=2; the interleaved schedule at PP=2 with 2 virtual stages (one of the
    4 layers per chunk; 3 micro-batches padded to 4)."""
    single = run_distributed(_engine_run, 1, folder, LENGTHS, 1, tp=1)[0]
    split = run_distributed(_engine_run, tp * pp, folder, LENGTHS, 1, tp=tp, pp=pp, vpp=vpp)
    for rank, (norms, weights, _) in enumerate(split):
        assert abs(norms[0] - single[0][0]) <= 1e-5 * single[0][0], (rank, norms, single[0])
        assert _max_diff(weights, single[1]) <= 1e-5, f"TP={tp} PP={pp} VPP={vpp} rank {rank}"


def _losses(rank, world_size, folder, params_dtype, lr, steps):
    from tests.helpers.engine import nll
    from policy_split_megatron.engine import pack_batch
    from policy_split_megatron.engine.collectives import sum_reports

    engine = build_engine(folder, params_dtype=params_dtype, total_steps=steps, lr=lr, grad_clip=0.0, weight_decay=0.0)
    ids, lens = batch(engine.arch.vocab_size, seed=0)
    mask = response_mask(lens, ids.shape[1])
    before = {n: p.detach().clone() for n, p in engine.module.named_parameters()}
    losses = []
    for step in range(steps):
        _, reports = engine.train_step(pack_batch(ids, lens, 64), nll(mask), step_index=step)
        totals = sum_reports(reports, ["nll", "tokens"])
        losses.append(totals["nll"] / totals["tokens"])
    changed = sum(int((p.detach() != before[n]).sum()) for n, p in engine.module.named_parameters() if p.ndim == 2)
    total = sum(p.numel() for p in engine.module.parameters() if p.ndim == 2)
    return losses, changed / total


def _plain_bf16_adamw(rank, world_size, folder, lr, steps):
    """The defect this engine removes: AdamW applied to bf16 weights directly."""
    from transformers import AutoConfig

    from policy_split_megatron.bridge import SafetensorsSource, load_hf_weights
    from policy_split_megatron.model import architecture_from_hf, build_policy_model, forward_logits
    from policy_split_megatron.ops import logprobs_and_entropy

    arch = architecture_from_hf(AutoConfig.from_pretrained(folder))
    model = build_policy_model(arch, params_dtype=torch.bfloat16)
    load_hf_weights(model, arch, SafetensorsSource(folder))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids, lens = batch(arch.vocab_size, seed=0)
    mask = response_mask(lens, ids.shape[1])[:, 1:]
    for _ in range(steps):
        optimizer.zero_grad()
        logp, _ = logprobs_and_entropy(forward_logits(model, ids, arch)[:, :-1], ids[:, 1:], vocab_size=arch.vocab_size)
        (-(logp * mask).sum() / mask.sum()).backward()
        optimizer.step()
    changed = sum(int((p.detach() != before[n]).sum()) for n, p in model.named_parameters() if p.ndim == 2)
    return changed / sum(p.numel() for p in model.parameters() if p.ndim == 2)


def test_bf16_params_with_fp32_main_params(folder):
    # The bf16 forward alone moves this loss of ~5.9 nats by 1.1e-3 before any update (1.9e-4
    # relative), so the bound is relative; lr 1e-2 makes each update ~100 bf16 ulps of a weight,
    # so the copies' rounding stays small against it (measured: <= 1.7e-3 relative over 3 updates).
    fp32, _ = run_distributed(_losses, 1, folder, torch.float32, 1e-2, 3, tp=1)[0]
    bf16, _ = run_distributed(_losses, 1, folder, torch.bfloat16, 1e-2, 3, tp=1)[0]
    assert abs(fp32[0] - bf16[0]) / fp32[0] <= 5e-4, (fp32, bf16)
    assert max(abs(a - b) / a for a, b in zip(fp32, bf16)) <= 3e-3, (fp32, bf16)
    assert fp32[-1] < fp32[0] - 1.0, f"the updates barely lowered the loss ({fp32}): the comparison is void"
    # The paper's learning rate (3e-6) on this model's N(0, 0.08) weights: each Adam step moves a
    # weight by ~3e-6, below half a bf16 ulp for almost every weight, so AdamW on the bf16 weights
    # themselves rounds nearly every update away (measured: 0.9% of the weights ever move in 10
    # steps); fp32 main parameters accumulate the steps until they show (7.4%; 14.8% in 20 steps).
    _, engine_changed = run_distributed(_losses, 1, folder, torch.bfloat16, 3e-6, 10, tp=1)[0]
    plain_changed = run_distributed(_plain_bf16_adamw, 1, folder, 3e-6, 10, tp=1)[0]
    assert engine_changed >= 0.05, f"only {engine_changed:.1%} of the bf16 weights moved in 10 steps"
    assert plain_changed <= engine_changed / 4, (plain_changed, engine_changed)


def _nan_on_rank_0(rank, world_size, folder):
    from policy_split_megatron.engine import NonFiniteGradientError, pack_batch
    from tests.helpers.engine import my_rows, nll

    engine = build_engine(folder)
    ids, lens = batch(engine.arch.vocab_size, seed=0)
    mask = response_mask(lens, ids.shape[1])
    good = nll(mask)

    def poisoned(pack, log_probs, entropy):
        value, count, report = good(pack, log_probs, entropy)
        return (value * float("nan") if rank == 0 else value), count, report

    before = full_weights(engine)
    with pytest.raises(NonFiniteGradientError, match="step 7: the global gradient norm is nan"):
        engine.train_step(pack_batch(ids, lens, 64, rows=my_rows(len(lens))), poisoned, step_index=7)
    unchanged = _max_diff(before, full_weights(engine)) == 0.0
    engine.train_step(pack_batch(ids, lens, 64, rows=my_rows(len(lens))), good, step_index=8)  # still usable
    return unchanged, _max_diff(before, full_weights(engine)) > 0


def test_non_finite_gradient_skips_the_step_on_every_rank(folder):
    assert run_distributed(_nan_on_rank_0, 2, folder, tp=1) == [(True, True), (True, True)]


def _schedule(rank, world_size, folder):
    engine = build_engine(folder, total_steps=100)
    # what Session.build_warm_start_optimizer asks for: warm-up 10, cosine to 0.1 over 100 steps
    engine.build_optimizer(total_steps=100, lr=1.0, lr_warmup_steps=10, lr_decay_style="cosine", min_lr=0.1)
    rates = []
    for _ in range(101):
        rates.append(engine.learning_rate)
        engine.scheduler.step(increment=1)
    constant = build_engine(folder, total_steps=100, lr=3e-6)
    return rates, constant.learning_rate


def test_learning_rate_schedules(folder):
    import math

    rates, constant = run_distributed(_schedule, 1, folder, tp=1)[0]
    assert constant == 3e-6  # the paper's constant rate
    assert rates[0] == 0.0 and rates[5] == pytest.approx(0.5) and rates[10] == pytest.approx(1.0)
    assert rates[55] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert rates[100] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(rates[10:], rates[11:]))


def _recompute_run(rank, world_size, folder, mode):
    engine = build_engine(folder, recompute=mode, eps=EPS)
    ids, lens = batch(engine.arch.vocab_size, seed=0)
    norms = train(engine, ids, lens, response_mask(lens, ids.shape[1]), steps=2)
    return norms, full_weights(engine)


@pytest.mark.parametrize("mode", ["selective", "full"])
def test_activation_recomputation_gives_the_same_update(folder, mode):
    plain = run_distributed(_recompute_run, 2, folder, "none", tp=2)[0]
    recomputed = run_distributed(_recompute_run, 2, folder, mode, tp=2)[0]
    assert recomputed[0] == pytest.approx(plain[0], rel=1e-6)
    assert _max_diff(recomputed[1], plain[1]) <= 1e-6
