"""The RL loop, one process per rank. Reads like the step it runs:

    prompts -> dual-mode rollouts (colocated engine) -> rewards -> rows, old log-probs, advantages
            -> optimizer updates -> metrics -> checkpoint; the next step syncs the new weights first

`train(config)` is what `policy-split train` runs in every rank (spawned locally on CPU, or
launched by torchrun/srun on clusters).
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from tqdm import tqdm

from policy_split_megatron.algorithms import requirements
from policy_split_megatron.algorithms.modes import HIGH_ENTROPY, NORMAL
from policy_split_megatron.config import RunConfig
from policy_split_megatron.distributed import init_distributed
from policy_split_megatron.engine.collectives import agree_max
from policy_split_megatron.rollout import build_dual_mode_prompts
from policy_split_megatron.rollout.layout import shard_bounds
from policy_split_megatron.data import load_prompt_dataset
from policy_split_megatron.trainer.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from policy_split_megatron.trainer.evaluate import evaluate, format_table
from policy_split_megatron.trainer.metrics_log import MetricsLog
from policy_split_megatron.trainer.reference import load_teachers, needs_reference, prepare_reference
from policy_split_megatron.trainer.dynamic_sampling import step_rollouts
from policy_split_megatron.trainer.session import Session
from policy_split_megatron.trainer.step import prepare_step
from policy_split_megatron.trainer.update import policy_update
from policy_split_megatron.trainer.warm_start import warm_start


class _StopRequest:
    """SIGTERM/SIGUSR1 (Slurm's pre-timeout signal) ask for a checkpoint and a clean exit."""

    def __init__(self) -> None:
        self.requested = False
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        self.requested = True

    def agreed(self) -> bool:
        """All ranks stop at the same step if any rank got the signal."""
        return bool(agree_max(self.requested))


def _my_prompts(prompts: list, rank: int, size: int) -> list:
    lo, hi = shard_bounds(len(prompts), size, rank)
    return prompts[lo:hi]


def train(config: RunConfig, *, show_progress: bool = True) -> dict[str, Any]:
    """Run (or resume) training; return the last step's metrics."""
    init_distributed(config.parallel.layout())
    dp_rank = parallel_state.get_data_parallel_rank()
    dp_size = parallel_state.get_data_parallel_world_size()
    if config.data.prompts_per_step < dp_size:
        from policy_split_megatron.errors import ConfigError

        raise ConfigError(f"data.prompts_per_step={config.data.prompts_per_step} is smaller than the data-parallel "
                         f"size {dp_size}: some ranks would never train; raise it or use fewer processes")
    session = Session.open(config)
    policy = session.policy
    is_main = dist.get_rank() == 0
    checkpoints = Path(config.logging.dir) / "checkpoints"
    log = MetricsLog.for_run(config, enabled=is_main)
    stop = _StopRequest()

    start_step, sampler_state = 0, None
    latest = latest_checkpoint(checkpoints) if config.checkpoint.resume else None
    if latest is not None:
        session.build_rl_optimizer()
        common = load_checkpoint(latest, policy.modules, policy.optimizer)
        start_step, sampler_state = common["step"], common.get("sampler")
        if sampler_state is not None:  # None: a model-only checkpoint (tools/convert_checkpoint.py from-hf)
            session.sampler.load_state_dict(sampler_state)
        if "scheduler" in common:
            policy.scheduler.load_state_dict(common["scheduler"])
        if not common["optimizer_restored"]:
            policy.weights_changed()
        log.resume_from(start_step, checkpoint=latest)  # steps logged after the checkpoint are redone
    else:
        if config.warm_start.steps:
            records = session.train_set.records
            prompts, _ = build_dual_mode_prompts(session.tokenizer, [r["prompt"] for r in records],
                                                 session.rollout_config)
            by_index = {p.index: p for p in prompts}
            kept = [i for i in range(len(records)) if i in by_index]
            session.build_warm_start_optimizer()
            losses = warm_start(
                policy, [records[i] for i in kept], [by_index[i] for i in kept], session.encode_response,
                steps=config.warm_start.steps, batch_size=config.warm_start.batch_size,
                pad_token_id=session.pad_token_id, seed=config.train.seed + dp_rank,
                token_budget=config.train.micro_batch_tokens, show_progress=show_progress and is_main,
            )
            log.write(0, {"warm_start/final_loss": losses[-1]}, phase="warm_start")
        session.build_rl_optimizer()  # fresh Adam state; fp32 main params from the (warm-started) weights

    # Frozen scorers (trainer/reference.py): the reference is the policy at the start of RL (after the
    # warm start), written once to <run>/reference/ and reloaded from there on resume.
    reference = (prepare_reference(session, config, fresh=latest is None, show_progress=show_progress and is_main)
                 if needs_reference(config.algorithm) else None)
    teachers = load_teachers(session, config) if requirements(config.algorithm).teacher_log_probs else []
    session.engine.sync_weights(policy.modules, session.arch)  # the engine starts with placeholder weights
    eval_records = load_prompt_dataset(session.eval_files, prompt_field=config.data.prompt_field,
                                       answer_field=config.data.answer_field).records[: config.evaluation.max_prompts]
    metrics: dict[str, Any] = {}
    before_rl: dict[str, Any] = {}
    if latest is None:
        before_rl = _evaluate_and_log(session, eval_records, config, log, step=0, title="before RL", show=is_main)
    bar = tqdm(range(start_step, config.train.steps), initial=start_step, total=config.train.steps,
               desc="policy split" if config.algorithm.name == "policy_split" else config.algorithm.name,
               unit="step", disable=not (show_progress and is_main))
    for step in bar:
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        records, prompts, samples, gen_metrics = step_rollouts(session, step=step)
        session.engine.sleep()  # CUDA: give the KV cache (and weights) back while Megatron trains; CPU: no-op
        timings["time/rollout"] = time.perf_counter() - t0

        learned = _learn(session, reference, teachers, records, prompts, samples, step=step, timings=timings)

        t0 = time.perf_counter()
        sync = session.engine.refit(policy.modules, session.arch)  # wake weights, sync, wake KV cache
        timings["time/sync"] = time.perf_counter() - t0

        metrics = {**learned, **gen_metrics, **sync.as_dict(), **timings}
        log.write(step + 1, metrics)
        reward = metrics.get("normal/reward", float("nan"))
        bar.set_postfix(reward=f"{reward:.3f}", he=f"{metrics.get('high_entropy/reward', float('nan')):.3f}")

        done = step + 1 == config.train.steps
        every = config.checkpoint.every_steps
        stopping = stop.agreed()
        if done or stopping or (every and (step + 1) % every == 0):
            # Signals are held while saving: the writer processes megatron-core spawns inherit the
            # mask (a SIGUSR1 would kill them mid-write); the handler sees the signal afterwards.
            held = {signal.SIGTERM, signal.SIGUSR1}
            signal.pthread_sigmask(signal.SIG_BLOCK, held)
            try:
                save_checkpoint(checkpoints, step + 1, policy.modules, policy.optimizer,
                                {"sampler": session.sampler.state_dict(), "scheduler": policy.scheduler.state_dict()},
                                keep_last=config.checkpoint.keep_last, hf_metadata_dir=session.model_dir)
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, held)
        if stopping:
            if is_main:
                print(f"stopped by signal after step {step + 1}; checkpoint saved, resume with the same command")
            break
    else:
        if config.train.steps == 0:  # warm start only: the evaluation before RL is the final one
            metrics.update(before_rl)
        else:
            metrics.update(_evaluate_and_log(session, eval_records, config, log, step=config.train.steps,
                                             title=f"after {config.train.steps} RL steps", show=is_main))
        if config.checkpoint.export_hf:
            from policy_split_megatron.bridge.hf_folder import write_hf_folder

            out = write_hf_folder(policy.modules, session.arch, Path(config.logging.dir) / "hf",
                                  metadata_dir=session.model_dir, dtype=config.checkpoint.export_dtype or
                                  config.model.params_dtype, show_progress=show_progress and is_main)
            if is_main:
                print(f"Hugging Face export: {out}")
    log.close()
    session.close()
    return metrics


def _learn(session, reference, teachers, records, prompts, samples, *, step: int, timings: dict) -> dict:
    """Old log-probs, advantages and the optimizer updates of one step; their metrics. A step whose
    rollouts kept no prompt (dynamic sampling: every group uniform; the same on every rank) makes no
    update: an Adam step on a zero gradient would still move the weights with its old moments."""
    config, policy = session.config, session.policy
    dp_rank = parallel_state.get_data_parallel_rank()
    dp_size = parallel_state.get_data_parallel_world_size()
    if not prompts:
        return {"train/skipped_update": 1.0}
    t0 = time.perf_counter()
    prepared = prepare_step(
        policy, config.algorithm, _my_prompts(prompts, dp_rank, dp_size), samples,
        pad_token_id=session.pad_token_id, token_budget=config.train.micro_batch_tokens,
        num_prompts=len(records), mini_batches=config.train.mini_batches,
        max_tokens={NORMAL: config.rollout.normal.max_tokens, HIGH_ENTROPY: config.rollout.explore.max_tokens},
        reference=reference, teachers=teachers,
    )
    timings["time/logprob"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    update_metrics = policy_update(
        policy, prepared.update, config.algorithm, epochs=config.train.ppo_epochs,
        mini_batches=config.train.mini_batches, micro_batch_tokens=config.train.micro_batch_tokens, step=step,
        # Clip-Cov's random token selection: seeded by (seed, step, DATA-parallel rank), so the
        # tensor-parallel (and pipeline) peers that share one loss draw the same tokens, and not
        # carried across steps, so a resumed run draws the same
        generator=_selection_generator(config.train.seed, step, dp_rank, policy.device),
    )
    timings["time/train"] = time.perf_counter() - t0
    return {**prepared.metrics, **{f"train/{k}": v for k, v in update_metrics.items()}}


def _selection_generator(seed: int, step: int, dp_rank: int, device: torch.device) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(hash((seed, step, dp_rank)) % 2**63)
    return generator


def _evaluate_and_log(session, records, config: RunConfig, log: MetricsLog, *, step: int, title: str, show: bool):
    result = evaluate(session, records, config.evaluation)
    log.write(step, result, phase="eval")
    if show:
        print(f"\nheld-out evaluation {title} ({len(records)} prompts x {config.evaluation.samples_per_prompt} "
              f"samples per mode, T={config.evaluation.temperature}):\n{format_table(result)}")
    return {f"eval/{k}": v for k, v in result.items()}

