"""The one configuration tree of a training run: `RunConfig`.

Sections: model, parallel, data, rollout (rollout/config.py), algorithm (algorithms/config.py),
optimizer (engine/config.py), train, warm_start, checkpoint, logging, evaluation. Every field
is documented where it is declared and checked in `__post_init__`, so a bad value fails at
start-up, before any model or engine is built. `load_run_config` reads YAML and applies dotted
command-line overrides (`train.steps=20`).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from policy_split_megatron.algorithms.config import AlgorithmConfig, config_from_dict
from policy_split_megatron.config_tree import merge_trees, normalize_tree, set_override
from policy_split_megatron.errors import ConfigError
from policy_split_megatron.model.precision import PrecisionConfig
from policy_split_megatron.rollout.config import RolloutConfig
from policy_split_megatron.tasks.countdown import CountdownConfig
from policy_split_megatron.engine.config import OptimizerConfig
from policy_split_megatron.model.builder import RECOMPUTE_MODES

PARAMS_DTYPES = ("float32", "bfloat16")
DIVERSITY_UNITS = ("tokens", "words")


def _require(ok: bool, name: str, rule: str, value: Any) -> None:
    if not ok:
        raise ValueError(f"{name} must be {rule}, got {value!r}")


@dataclass
class ModelConfig:
    hf_path: str = ""
    """Hugging Face model folder (config.json, safetensors, tokenizer). Empty: the embedded tiny
    model, written at start-up into `<logging.dir>/model`."""
    params_dtype: str = "float32"
    """Dtype of the Megatron policy's parameters: float32 or bfloat16."""
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    """Training precision: FP8 through Transformer Engine (fp8, fp8_recipe, fp8_param, first/last
    layers in BF16, ...; model/precision.py documents each field) or none (the default: the
    params dtype everywhere). FP8 needs a CUDA GPU and is checked against it at start-up."""
    recompute: str = "none"
    """Activation recomputation in the backward pass (megatron-core's TransformerConfig):
    none | selective (core attention only: little compute, most of the activation memory of long
    sequences) | full (every layer's input is kept, the layer is recomputed)."""

    def __post_init__(self) -> None:
        _require(self.params_dtype in PARAMS_DTYPES, "model.params_dtype", f"one of {PARAMS_DTYPES}", self.params_dtype)
        _require(self.recompute in RECOMPUTE_MODES, "model.recompute", f"one of {RECOMPUTE_MODES}", self.recompute)


@dataclass
class ParallelConfig:
    tensor_parallel: int = 1
    """Megatron tensor-parallel size; must divide the attention and KV head counts."""
    pipeline_parallel: int = 1
    """Megatron pipeline-parallel size: layers split over stages, every forward/backward through
    megatron-core's 1F1B schedule. Must divide the layer count."""

    virtual_pipeline_parallel: int | None = None
    """Model chunks per pipeline stage (megatron-core's interleaved 1F1B schedule: a smaller pipeline
    bubble for more point-to-point traffic). None: one chunk. Needs pipeline_parallel > 1; the layer
    count must be divisible by pipeline_parallel x virtual_pipeline_parallel."""

    def __post_init__(self) -> None:
        for name in ("tensor_parallel", "pipeline_parallel"):
            value = getattr(self, name)
            _require(isinstance(value, int) and value >= 1, f"parallel.{name}", "an int >= 1", value)
        vpp = self.virtual_pipeline_parallel
        _require(vpp is None or (isinstance(vpp, int) and vpp >= 2 and self.pipeline_parallel > 1),
                 "parallel.virtual_pipeline_parallel", "None, or an int >= 2 with parallel.pipeline_parallel > 1", vpp)

    def layout(self):
        from policy_split_megatron.distributed import ParallelLayout

        return ParallelLayout(self.tensor_parallel, self.pipeline_parallel, self.virtual_pipeline_parallel)


@dataclass
class DataConfig:
    train_files: list[str] = field(default_factory=list)
    """JSONL or Parquet prompt files. Empty: the embedded Countdown train set."""
    eval_files: list[str] = field(default_factory=list)
    """Held-out prompt files for evaluation. Empty: the embedded Countdown eval set."""
    prompt_field: str = "prompt"
    """Record field holding the question text."""
    answer_field: str = "answer"
    """Record field holding the reference answer the reward function checks against."""
    reward: str = "countdown"
    """Reward function: a built-in name (countdown, math, multiple_choice) or "package.module:function"."""
    prompts_per_step: int = 8
    """Prompts per RL step over all data-parallel ranks (each gets n_normal + n_explore samples)."""
    seed: int = 0
    """Seed of the prompt order."""
    countdown: CountdownConfig = field(default_factory=CountdownConfig)
    """Problem family of the embedded Countdown sets (used only when `train_files` is empty);
    fields in tasks/countdown.py."""
    countdown_train_size: int = 2000
    """Problems in the embedded train set."""
    countdown_eval_size: int = 200
    """Problems in the embedded held-out set (disjoint from train by a hash of the problem)."""
    reward_workers: int = 4
    """Processes per rank that score responses (rewards/pool.py); each step's samples are split
    over the ranks, so every sample is scored once. 0: score in the rank's own process, without
    the per-sample timeout."""
    reward_timeout: float = 5.0
    """Seconds one response may take to score; past it the worker is replaced and the sample scores
    0 (counted in reward/timeouts). 5 s is math-verify's own default."""

    def __post_init__(self) -> None:
        _require(self.prompts_per_step >= 1, "data.prompts_per_step", "an int >= 1", self.prompts_per_step)
        for name in ("countdown_train_size", "countdown_eval_size"):
            _require(getattr(self, name) >= 1, f"data.{name}", "an int >= 1", getattr(self, name))
        _require(self.reward_workers >= 0, "data.reward_workers", "an int >= 0", self.reward_workers)
        _require(self.reward_timeout > 0, "data.reward_timeout", "> 0 seconds", self.reward_timeout)


@dataclass
class TrainConfig:
    steps: int = 30
    """RL steps (each: rollouts -> advantages -> updates -> weight sync). 0: warm start and
    evaluation only (e.g. to share one warm-started model between several RL runs)."""
    ppo_epochs: int = 1
    """Passes over each step's rollouts."""
    mini_batches: int = 1
    """Optimizer steps per epoch; the step's prompts (with all their rows) are split into this many
    contiguous mini-batches, the same split at any data-parallel size."""
    micro_batch_tokens: int = 4096
    """Tokens per packed micro-batch (rows concatenated, no padding but the FP8 alignment) for
    forward/backward and log-prob passes; bounds activation and logits memory. A longer row forms a
    micro-batch of its own."""
    logprob_chunk_size: int = 1024
    """Tokens per chunk inside the vocab-parallel log-prob op."""
    seed: int = 0
    """Seed of initialisation, sampling seeds and Clip-Cov's random selection."""

    def __post_init__(self) -> None:
        _require(isinstance(self.steps, int) and self.steps >= 0, "train.steps", "an int >= 0", self.steps)
        for name in ("ppo_epochs", "mini_batches", "micro_batch_tokens", "logprob_chunk_size"):
            value = getattr(self, name)
            _require(isinstance(value, int) and value >= 1, f"train.{name}", "an int >= 1", value)


@dataclass
class WarmStartConfig:
    steps: int = 0
    """Supervised steps on the dataset's reference solutions before RL (0: none). The embedded
    default uses it to give the random tiny model partial accuracy, so RL has room to improve."""
    batch_size: int = 64
    """Sequences per supervised step."""
    lr: float = 3e-3
    """Peak learning rate of the warm start (its own megatron-core optimizer, with the betas,
    weight decay, clipping and distributed-optimizer settings of `optimizer`)."""
    warmup_steps: int = 20
    """Linear warm-up from 0 to `lr` over this many steps (megatron-core's scheduler: the first
    step runs at lr 0), then cosine decay to `lr * min_lr_ratio` at the last step."""
    min_lr_ratio: float = 0.1
    """Final learning rate of the cosine decay, as a fraction of `lr`."""

    def __post_init__(self) -> None:
        _require(self.steps >= 0, "warm_start.steps", "an int >= 0", self.steps)
        _require(self.batch_size >= 1, "warm_start.batch_size", "an int >= 1", self.batch_size)
        _require(self.lr > 0, "warm_start.lr", "> 0", self.lr)
        _require(self.warmup_steps >= 0, "warm_start.warmup_steps", "an int >= 0", self.warmup_steps)
        _require(0 <= self.min_lr_ratio <= 1, "warm_start.min_lr_ratio", "in [0, 1]", self.min_lr_ratio)


@dataclass
class CheckpointConfig:
    every_steps: int = 10
    """Save every N RL steps (and on SIGTERM/SIGUSR1, and at the end). 0: only at the end."""
    keep_last: int = 2
    """Complete checkpoints to keep."""
    resume: bool = True
    """Continue from `<logging.dir>/checkpoints/latest` when it exists."""
    export_hf: bool = True
    """At the end of a completed run, write the policy as a Hugging Face folder to `<logging.dir>/hf`
    (safetensors shards + index, config, tokenizer, generation config)."""
    export_dtype: str = ""
    """Dtype of that export: float32 or bfloat16; empty = `model.params_dtype`."""

    def __post_init__(self) -> None:
        _require(self.export_dtype in ("",) + PARAMS_DTYPES, "checkpoint.export_dtype",
                 f"empty or one of {PARAMS_DTYPES}", self.export_dtype)
        _require(self.every_steps >= 0, "checkpoint.every_steps", "an int >= 0", self.every_steps)
        _require(self.keep_last >= 1, "checkpoint.keep_last", "an int >= 1", self.keep_last)


@dataclass
class LoggingConfig:
    dir: str = "runs/default"
    """Run directory: metrics.jsonl, TensorBoard events, checkpoints/, hf/ export, curves.png."""
    tensorboard: bool = True
    """Also write TensorBoard event files."""
    wandb: bool = False
    """Also log to Weights & Biases (needs `pip install .[wandb]`); a resumed run continues the same
    W&B run (trainer/metrics_log.py)."""
    wandb_project: str = "policy-split"
    """W&B project."""
    wandb_entity: str = ""
    """W&B entity (team or user); empty: your default."""
    wandb_name: str = ""
    """W&B run name; empty: the run directory's name."""
    wandb_mode: str = ""
    """"online", "offline" (written under <dir>/wandb, for `wandb sync`) or "disabled"; empty: W&B's
    own setting (the WANDB_MODE variable, else online)."""
    diversity_max_prompts: int = 128
    """Prompts per mode whose samples the text-diversity metrics (distinct-n, Div-N-Gram, Div-BLEU)
    are computed on each step: a seeded subsample when there are more (Div-BLEU costs O(k^2 L)
    per prompt). 0: every prompt. Correctness metrics always use every prompt."""
    diversity_units: str = "tokens"
    """What the diversity metrics count: "tokens" (the tokenizer's, special tokens left out; for the
    embedded char tokenizer these are characters) or "words" (the decoded text split on spaces)."""

    def __post_init__(self) -> None:
        _require(self.diversity_max_prompts >= 0, "logging.diversity_max_prompts", "an int >= 0",
                 self.diversity_max_prompts)
        _require(self.wandb_mode in ("", "online", "offline", "disabled"), "logging.wandb_mode",
                 'empty, "online", "offline" or "disabled"', self.wandb_mode)
        _require(self.diversity_units in DIVERSITY_UNITS, "logging.diversity_units", f"one of {DIVERSITY_UNITS}",
                 self.diversity_units)


@dataclass
class EvaluationConfig:
    samples_per_prompt: int = 8
    """k samples per held-out prompt and mode; accuracy is averaged over them (paper: 8)."""
    temperature: float = 0.6
    """Paper, Table 9."""
    top_p: float = 0.95
    """Paper, Table 9."""
    top_k: int = 20
    """Paper, Table 9."""
    max_prompts: int = 64
    """Held-out prompts evaluated (the first N of the eval set, or of each benchmark of
    `policy-split evaluate --benchmark`; set it above a benchmark's size to evaluate all of it)."""
    max_tokens: int = 0
    """Response length limit of the evaluation; 0: the rollout's (rollout.normal/explore.max_tokens).
    Paper: 32,768, which needs rollout.max_model_len above it plus the longest prompt."""
    batch_prompts: int = 256
    """Prompts generated per engine call (their samples, token ids and entropies are held in memory
    at once). Request seeds depend on it: results are reproducible for the same value."""

    def __post_init__(self) -> None:
        _require(self.samples_per_prompt >= 1, "evaluation.samples_per_prompt", "an int >= 1", self.samples_per_prompt)
        _require(self.temperature > 0, "evaluation.temperature", "> 0", self.temperature)
        _require(0 < self.top_p <= 1, "evaluation.top_p", "in (0, 1]", self.top_p)
        _require(self.max_prompts >= 1, "evaluation.max_prompts", "an int >= 1", self.max_prompts)
        _require(isinstance(self.max_tokens, int) and self.max_tokens >= 0, "evaluation.max_tokens", "an int >= 0",
                 self.max_tokens)
        _require(isinstance(self.batch_prompts, int) and self.batch_prompts >= 1, "evaluation.batch_prompts",
                 "an int >= 1", self.batch_prompts)


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=lambda: RolloutConfig(model_path="<set at start-up>"))
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    warm_start: WarmStartConfig = field(default_factory=WarmStartConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)

    def __post_init__(self) -> None:
        if self.rollout.normal.temperature != self.rollout.explore.temperature:
            # Every row is scored at one temperature (both conditionings of a response share a loss).
            raise ValueError(
                "rollout.normal.temperature and rollout.explore.temperature must be equal "
                f"({self.rollout.normal.temperature} vs {self.rollout.explore.temperature})"
            )
        ps = self.algorithm.policy_split
        if self.algorithm.name == "policy_split":
            for name in MIRRORED_POLICY_SPLIT_FIELDS:
                if getattr(self.rollout, name) != getattr(ps, name):
                    raise ValueError(
                        f"rollout.{name} must equal algorithm.policy_split.{name} (what is sampled is what "
                        f"is scored): {getattr(self.rollout, name)!r} vs {getattr(ps, name)!r}; set one of them"
                    )
        if self.evaluation.max_tokens >= self.rollout.max_model_len:
            raise ValueError(f"evaluation.max_tokens={self.evaluation.max_tokens} leaves no room for the prompt in "
                             f"rollout.max_model_len={self.rollout.max_model_len}: raise rollout.max_model_len")
        erpd = self.algorithm.erpd
        if self.algorithm.name == "erpd" and erpd.stage == 2 and not erpd.teachers:
            # The trainer scores the rollouts with these frozen models (trainer/reference.py).
            raise ValueError("algorithm.erpd.stage=2 needs algorithm.erpd.teachers: a non-empty list of teacher "
                             "model folders (Hugging Face folders of the policy's architecture)")
        if self.train.mini_batches > self.data.prompts_per_step:
            raise ValueError(f"train.mini_batches={self.train.mini_batches} exceeds data.prompts_per_step="
                             f"{self.data.prompts_per_step}: mini-batches are cut by prompt, so some would be empty")
        if self.algorithm.name != "policy_split" and self.rollout.n_explore:
            raise ValueError(
                f"algorithm {self.algorithm.name} samples the normal mode only: set rollout.n_explore=0"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


MIRRORED_POLICY_SPLIT_FIELDS = ("n_normal", "n_explore", "he_system_prompt", "he_prompt_placement")
"""Fields that both `rollout` (what is sampled) and `algorithm.policy_split` (how it is scored)
hold. Set in one section only, they are copied to the other; set differently in both, the run
is refused (`RunConfig.__post_init__`)."""


def _mirror_policy_split_fields(tree: dict) -> None:
    if tree.get("algorithm", {}).get("name", "policy_split") != "policy_split":
        return  # other algorithms ignore the policy_split section
    rollout = tree.setdefault("rollout", {})
    ps = tree.setdefault("algorithm", {}).setdefault("policy_split", {})
    for name in MIRRORED_POLICY_SPLIT_FIELDS:
        if name in rollout and name not in ps:
            ps[name] = rollout[name]
        elif name in ps and name not in rollout:
            rollout[name] = ps[name]


def load_run_config(
    path: str | Path | None = None, overrides: list[str] = (), *, base: dict | None = None
) -> RunConfig:
    """`base` tree (e.g. the embedded default) <- YAML file (optional) <- `section.field=value`
    overrides (read by each field's type: config_tree.py) -> validated RunConfig. Every mistake is
    a ConfigError naming the field."""
    tree: dict = {}
    if path:
        try:
            tree = yaml.safe_load(Path(path).read_text())
        except OSError as err:
            raise ConfigError(f"--config {path}: {err.strerror or err}") from err
        except yaml.YAMLError as err:
            raise ConfigError(f"--config {path} is not valid YAML: {' '.join(str(err).split())}") from err
        if tree is not None and not isinstance(tree, dict):
            raise ConfigError(f"--config {path} must hold a mapping of sections (model:, data:, ...), "
                              f"got {type(tree).__name__}")
    tree = merge_trees(copy.deepcopy(base or {}), tree or {})
    for item in overrides:
        set_override(tree, item)
    tree = normalize_tree(RunConfig, tree)
    _mirror_policy_split_fields(tree)
    tree.setdefault("rollout", {}).setdefault("model_path", tree.get("model", {}).get("hf_path") or "<set at start-up>")
    try:
        return config_from_dict(RunConfig, tree)
    except (ValueError, TypeError) as err:  # a field's own check (__post_init__)
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(str(err)) from err
