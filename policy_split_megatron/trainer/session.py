"""Everything a rank builds before the first step, and the scored rollouts of one step.

Set-up order follows the cost of a mistake: the config is already validated; the model folder,
tokenizer and data are checked next (seconds); only then are the Megatron policy and the vLLM
engine built (the expensive part).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from policy_split_megatron.bridge import SafetensorsSource
from policy_split_megatron.bridge.hf_folder import resolve_dtype
from policy_split_megatron.config import RunConfig
from policy_split_megatron.data import PromptSampler, load_prompt_dataset
from policy_split_megatron.engine import PolicyEngine
from policy_split_megatron.model import ModelArchitecture, architecture_from_hf
from policy_split_megatron.model.builder import recompute_overrides
from policy_split_megatron.model.precision import check_hardware_support
from policy_split_megatron.rewards import load_reward_fn
from policy_split_megatron.rollout import (
    RolloutConfig,
    VLLMRolloutEngine,
    all_gather_samples,
    build_dual_mode_prompts,
    resolve_pad_token_id,
    shard_prompts,
    skip_metrics,
)


def prepare_embedded_default(run_dir: Path, config: RunConfig) -> tuple[Path, list[str], list[str]]:
    """Write the embedded tiny model and the Countdown train/eval sets under `run_dir` (main rank;
    idempotent). Returns (model folder, train files, eval files)."""
    from policy_split_megatron.data import write_countdown_dataset
    from policy_split_megatron.tasks.tiny_model import write_tiny_model

    model_dir, data_dir = run_dir / "model", run_dir / "data"
    if not config.model.hf_path and not (model_dir / "config.json").exists():
        write_tiny_model(model_dir, seed=config.train.seed)
    files = write_countdown_dataset(data_dir, config.data.countdown, train_size=config.data.countdown_train_size,
                                    eval_size=config.data.countdown_eval_size, seed=config.train.seed)
    return model_dir, [str(files.train)], [str(files.eval)]


@dataclass
class Session:
    config: RunConfig
    rollout_config: RolloutConfig
    tokenizer: Any
    arch: ModelArchitecture
    policy: PolicyEngine  # the Megatron policy, trained by megatron-core (engine/)
    reward_fn: Any
    train_set: Any
    eval_files: list[str]
    sampler: PromptSampler
    engine: VLLMRolloutEngine  # the colocated rollout engine
    pad_token_id: int
    eos_token_id: int
    model_dir: Path

    @classmethod
    def open(cls, config: RunConfig, *, load_weights: bool = True) -> "Session":
        """Build everything for `config`. `load_weights=False`: the model folder holds only config and
        tokenizer (a checkpoint's hf_metadata); the caller loads the weights."""
        from transformers import AutoConfig, AutoTokenizer

        run_dir = Path(config.logging.dir)
        model_dir = Path(config.model.hf_path) if config.model.hf_path else run_dir / "model"
        train_files, eval_files = list(config.data.train_files), list(config.data.eval_files)
        if dist.get_rank() == 0:
            run_dir.mkdir(parents=True, exist_ok=True)
            if not config.model.hf_path or not train_files:
                prepare_embedded_default(run_dir, config)
        dist.barrier()
        if not config.model.hf_path or not train_files:
            train_files = train_files or [str(run_dir / "data" / "countdown_train.jsonl")]
            eval_files = eval_files or [str(run_dir / "data" / "countdown_eval.jsonl")]
        support = check_hardware_support(config.model.precision)  # FP8 on this GPU/CUDA/TE, before any work
        if support is not None and dist.get_rank() == 0:
            print(support.describe())
        if not (model_dir / "config.json").exists():
            raise FileNotFoundError(f"model.hf_path={model_dir} holds no config.json: point to a Hugging Face model folder")
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        pad = resolve_pad_token_id(tokenizer)
        arch = architecture_from_hf(AutoConfig.from_pretrained(model_dir))
        if config.algorithm.name == "erpd" and config.algorithm.erpd.stage == 2:
            from policy_split_megatron.trainer.reference import check_teacher_folders

            check_teacher_folders(config.algorithm.erpd.teachers, arch)  # before anything expensive
        train_set = load_prompt_dataset(
            train_files, prompt_field=config.data.prompt_field, answer_field=config.data.answer_field
        )
        sampler = PromptSampler(train_set, config.data.prompts_per_step, seed=config.data.seed, rank=0, world_size=1)
        reward_fn = load_reward_fn(config.data.reward)
        # The engine samples from the same numbers the trainer scores: same dtype unless asked otherwise.
        engine_dtype = config.model.params_dtype if config.rollout.dtype == "auto" else config.rollout.dtype
        # train.seed varies the engine's request seeds too (a seed must vary everything random in a run);
        # train.seed=0 leaves rollout.*.seed as they are.
        seeds = {mode: dataclasses.replace(sampling, seed=None if sampling.seed is None
                                           else sampling.seed + 1_000_003 * config.train.seed)
                 for mode, sampling in (("normal", config.rollout.normal), ("explore", config.rollout.explore))}
        rollout_config = dataclasses.replace(config.rollout, model_path=str(model_dir), dtype=engine_dtype, **seeds)

        policy = PolicyEngine(arch, params_dtype=resolve_dtype(config.model.params_dtype),
                              precision=config.model.precision, optimizer=config.optimizer,
                              temperature=config.rollout.normal.temperature,
                              logprob_chunk_size=config.train.logprob_chunk_size,
                              **recompute_overrides(config.model.recompute))
        if load_weights:
            policy.load_hf_weights(SafetensorsSource(model_dir))
        engine = VLLMRolloutEngine(rollout_config)
        engine.start()
        return cls(config, rollout_config, tokenizer, arch, policy, reward_fn, train_set, eval_files,
                   sampler, engine, pad, tokenizer.eos_token_id, model_dir)

    def encode_response(self, text: str) -> list[int]:
        """Token ids of a response text followed by EOS (for supervised targets)."""
        return list(self.tokenizer.encode(text, add_special_tokens=False)) + [self.eos_token_id]

    def build_warm_start_optimizer(self) -> None:
        """The warm start's own optimizer and schedule (peak warm_start.lr, linear warm-up, cosine
        decay to lr * min_lr_ratio); the RL optimizer is built fresh after it."""
        ws = self.config.warm_start
        self.policy.build_optimizer(total_steps=ws.steps, lr=ws.lr, lr_warmup_steps=ws.warmup_steps,
                                    lr_decay_style="cosine", min_lr=ws.lr * ws.min_lr_ratio)

    def build_rl_optimizer(self) -> None:
        """The RL optimizer: `optimizer.*`, decaying (if asked) over every optimizer step of the run."""
        train = self.config.train
        self.policy.build_optimizer(total_steps=train.steps * train.ppo_epochs * train.mini_batches)

    def close(self) -> None:
        self.engine.shutdown()


def generate_scored(session: Session, records: list[dict], *, step: int):
    """Render `records` in both modes, generate on this rank's replica, gather every replica's
    samples, and score them. Returns (prompts, samples, metrics) with identical prompts and
    samples on every rank. Each sample is scored once, by one rank's reward pool, and the scores
    and diversity rows are gathered (trainer/scoring.py)."""
    from policy_split_megatron.trainer.scoring import diversity_metrics, score_samples

    prompts, skipped = build_dual_mode_prompts(session.tokenizer, [r["prompt"] for r in records], session.rollout_config)
    result = session.engine.generate(shard_prompts(prompts, session.engine.layout), step=step)
    samples = all_gather_samples(result.samples, session.engine.layout)
    data, logging = session.config.data, session.config.logging
    special = set(session.tokenizer.all_special_ids)

    def text(sample):
        return session.tokenizer.decode(sample.response_ids, skip_special_tokens=True)

    def units(sample):
        if logging.diversity_units == "words":
            return text(sample).split()
        return [t for t in sample.response_ids if t not in special]

    scores, reward_metrics = score_samples(samples, records, session.reward_fn, text,
                                           workers=data.reward_workers, timeout=data.reward_timeout)
    for sample, score in zip(samples, scores):
        sample.reward = float(score.reward)
    metrics = dict(skip_metrics(skipped))  # keys already carry their "rollout/" prefix
    metrics.update(diversity_metrics(samples, scores, units, max_prompts=logging.diversity_max_prompts, seed=step))
    metrics.update(reward_metrics)
    metrics.update(result.metrics.as_dict())  # this replica's generation counts and speed
    return prompts, samples, {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
