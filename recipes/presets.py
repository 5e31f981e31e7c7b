"""Models and algorithms of the recipes as RunConfig override lists (`section.field=value`), the
same strings `policy-split train` takes on its command line. No NeMo-Run import here: the presets
are checked against the configuration tree by `validate` (tests/slurm/test_recipes_unit.py).

Realistic settings follow the Policy Split paper (arXiv 2604.11510, Tables 8-9) where it states
them: 256 prompts per step, rollout size 8 (4 normal + 4 high-entropy for Policy Split, 8 for the
baselines), temperature 1.0, learning rate 3e-6 constant, AdamW (wd 0.01, clip 1.0), PPO eps 0.2,
no KL loss, 12,288 response tokens; evaluation at T=0.6, top-p 0.95, top-k 20. Baseline
coefficients are the defaults of policy_split_megatron/algorithms/config.py (cited there).
"""

from __future__ import annotations

from typing import Optional

ALGORITHM_PRESETS: dict[str, list[str]] = {
    # Policy Split: one group of G = 8 per prompt, half sampled under the high-entropy prompt.
    "policy_split": ["algorithm.name=policy_split", "rollout.n_normal=4", "rollout.n_explore=4"],
    "grpo": ["algorithm.name=grpo", "rollout.n_normal=8", "rollout.n_explore=0"],
    # Entropy bonus (PS App. B.3: 0.003), annealed linearly to 0 over the run when total_steps is set.
    "entropy_reg": ["algorithm.name=entropy_reg", "rollout.n_normal=8", "rollout.n_explore=0"],
    "clip_cov": ["algorithm.name=clip_cov", "rollout.n_normal=8", "rollout.n_explore=0"],
    "kl_cov": ["algorithm.name=kl_cov", "rollout.n_normal=8", "rollout.n_explore=0"],
    "entropy_adv": ["algorithm.name=entropy_adv", "rollout.n_normal=8", "rollout.n_explore=0"],
    "entropy_driven_adv": ["algorithm.name=entropy_driven_adv", "rollout.n_normal=8", "rollout.n_explore=0"],
    "forking_tokens": ["algorithm.name=forking_tokens", "rollout.n_normal=8", "rollout.n_explore=0"],
}
"""Algorithm name -> overrides. The names are algorithms.config.ALGORITHM_NAMES (ERPD has two
stages with their own inputs and is launched with explicit overrides)."""

# The paper's RL settings, shared by the realistic models.
_PAPER_RL = [
    "model.params_dtype=bfloat16",
    "data.prompts_per_step=256",
    "data.reward=math",
    "optimizer.lr=3e-06",
    "optimizer.weight_decay=0.01",
    "optimizer.grad_clip=1.0",
    "algorithm.ppo.clip_eps_low=0.2",
    "algorithm.ppo.clip_eps_high=0.2",
    "algorithm.ppo.kl_coef=0.0",
    "evaluation.temperature=0.6",
    "evaluation.top_p=0.95",
    "evaluation.top_k=20",
    "evaluation.samples_per_prompt=8",
    "train.steps=78",  # one epoch of 20K prompts at 256 per step
    "checkpoint.every_steps=10",
    # megatron-core's engine as docs/memory_plan.md plans it: the distributed optimizer shards fp32
    # main params and Adam moments over data-parallel ranks; communication overlaps compute (GPU).
    "optimizer.use_distributed_optimizer=True",
    "optimizer.overlap_grad_reduce=True",
    "optimizer.overlap_param_gather=True",
    "model.recompute=full",
]

MODEL_PRESETS: dict[str, dict] = {
    "qwen3_8b": {
        "hf_path": "Qwen/Qwen3-8B",
        "tensor_parallel": 2,  # 8 KV heads: TP in {1, 2, 4, 8}
        "overrides": _PAPER_RL + [
            "rollout.normal={'temperature': 1.0, 'max_tokens': 12288}",
            "rollout.explore={'temperature': 1.0, 'max_tokens': 12288}",
            "rollout.max_model_len=14336",
            "rollout.chat_template_kwargs={'enable_thinking': True}",  # the paper trains thinking mode
            "rollout.engine_tensor_parallel=2",
            "rollout.gpu_memory_utilization=0.4",  # docs/memory_plan.md: 72.9 GB peak per GPU
            "train.micro_batch_tokens=16384",
        ],
    },
    "llama31_8b": {
        "hf_path": "meta-llama/Llama-3.1-8B-Instruct",
        "tensor_parallel": 2,  # 8 KV heads
        "overrides": _PAPER_RL + [
            # no thinking mode: shorter responses than Qwen3's
            "rollout.normal={'temperature': 1.0, 'max_tokens': 4096}",
            "rollout.explore={'temperature': 1.0, 'max_tokens': 4096}",
            "rollout.max_model_len=6144",
            "rollout.engine_tensor_parallel=2",
            "rollout.gpu_memory_utilization=0.4",
            "train.micro_batch_tokens=16384",
        ],
    },
    "llama31_70b": {
        "hf_path": "meta-llama/Llama-3.1-70B-Instruct",
        "tensor_parallel": 8,
        "pipeline_parallel": 2,  # 80 layers: 40 per stage; 8 nodes x 8 GPUs give DP = 4
        "nodes": 8,
        "overrides": _PAPER_RL + [
            "rollout.normal={'temperature': 1.0, 'max_tokens': 4096}",
            "rollout.explore={'temperature': 1.0, 'max_tokens': 4096}",
            "rollout.max_model_len=6144",
            "rollout.engine_tensor_parallel=8",
            "rollout.gpu_memory_utilization=0.45",  # docs/memory_plan.md: 79.6 GB peak per GPU
            "train.micro_batch_tokens=8192",
        ],
    },
}
"""Model name -> {hf_path: the Hugging Face id (download it to a local folder and pass that folder
as hf_path), tensor_parallel: default TP, pipeline_parallel (default 1), nodes (8-GPU nodes the
layout is planned for, default 1), overrides}. The layouts follow docs/memory_plan.md."""


def _quote(value: str) -> str:
    return repr(str(value))  # the override parser reads Python literals: keep paths as strings


def algorithm_overrides(algorithm: str) -> list[str]:
    if algorithm not in ALGORITHM_PRESETS:
        raise ValueError(f"unknown algorithm {algorithm!r}; one of {sorted(ALGORITHM_PRESETS)}")
    return list(ALGORITHM_PRESETS[algorithm])


def embedded_default_overrides(
    *, algorithm: str = "policy_split", steps: Optional[int] = None, logging_dir: Optional[str] = None,
    tensor_parallel: int = 1, extra: Optional[list[str]] = None,
) -> list[str]:
    """The embedded default (tiny model, Countdown, CPU or GPU): its own rollout counts unless a
    baseline is asked for (then 8 normal samples, none high-entropy)."""
    out = [] if algorithm == "policy_split" else algorithm_overrides(algorithm)
    if steps is not None:
        out.append(f"train.steps={int(steps)}")
    if logging_dir:
        out.append(f"logging.dir={_quote(logging_dir)}")
    if tensor_parallel != 1:
        out.append(f"parallel.tensor_parallel={int(tensor_parallel)}")
    return out + list(extra or [])


def model_overrides(
    model: str, algorithm: str = "policy_split", *, hf_path: Optional[str] = None,
    train_files: Optional[list[str]] = None, eval_files: Optional[list[str]] = None,
    logging_dir: Optional[str] = None, tensor_parallel: Optional[int] = None, pipeline_parallel: Optional[int] = None,
    steps: Optional[int] = None, extra: Optional[list[str]] = None,
) -> list[str]:
    """Overrides of a realistic run: model preset + algorithm preset + paths + layout + `extra`
    (later entries win, so `extra` can change anything)."""
    if model not in MODEL_PRESETS:
        raise ValueError(f"unknown model {model!r}; one of {sorted(MODEL_PRESETS)}")
    preset = MODEL_PRESETS[model]
    out = list(preset["overrides"]) + algorithm_overrides(algorithm)
    out.append(f"model.hf_path={_quote(hf_path or preset['hf_path'])}")
    if train_files:
        out.append(f"data.train_files={[str(f) for f in train_files]!r}")
    if eval_files:
        out.append(f"data.eval_files={[str(f) for f in eval_files]!r}")
    out.append(f"parallel.tensor_parallel={int(tensor_parallel or preset['tensor_parallel'])}")
    out.append(f"parallel.pipeline_parallel={int(pipeline_parallel or preset.get('pipeline_parallel', 1))}")
    if steps is not None:
        out.append(f"train.steps={int(steps)}")
    out.append(f"logging.dir={_quote(logging_dir or f'runs/{model}-{algorithm}')}")
    return out + list(extra or [])


def validate(overrides: list[str], config: Optional[str] = None):
    """The RunConfig the overrides give (every field checked); raises ValueError naming the field."""
    from policy_split_megatron.cli import load_cli_config

    return load_cli_config(config, list(overrides))
