"""`optimizer` section of the run configuration, and its mapping onto megatron-core's own configs.

Every field maps onto megatron-core's `OptimizerConfig` (Adam with decoupled weight decay, gradient
clipping, the distributed optimizer, fp32 main parameters behind bf16/fp16 weights),
`DistributedDataParallelConfig` (gradient reduction in fp32, overlapped communication) or
`OptimizerParamScheduler` (warm-up then constant / cosine / linear decay). Nothing here trains:
`engine/policy.py` builds megatron-core's objects from these values.

Weight decay follows megatron-core's rule: biases and 1-D parameters (norm weights) are not decayed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

LR_DECAY_STYLES = ("constant", "cosine", "linear")


@dataclass
class OptimizerConfig:
    lr: float = 1e-6
    """Peak learning rate (paper, Table 8: 3e-6 for Qwen3 1.7B-8B; constant)."""
    min_lr: float = 0.0
    """Final learning rate of a cosine/linear decay (ignored by `lr_decay_style=constant`)."""
    lr_warmup_steps: int = 0
    """Optimizer steps of linear warm-up from 0 to `lr` (megatron-core's scheduler: the first step
    runs at lr 0 when this is > 0)."""
    lr_decay_style: str = "constant"
    """After the warm-up: constant (the paper), cosine or linear decay to `min_lr`."""
    lr_decay_steps: int = 0
    """Optimizer steps over which the decay runs; 0 = every optimizer step of the run
    (train.steps x ppo_epochs x mini_batches)."""
    weight_decay: float = 0.01
    """Decoupled (AdamW) weight decay (paper: 1e-2); biases and norm weights are not decayed."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam betas."""
    eps: float = 1e-8
    """Adam epsilon."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value (paper: 1.0); 0 disables clipping."""
    use_distributed_optimizer: bool = True
    """Shard the fp32 main parameters and Adam moments over data-parallel ranks (ZeRO-1, megatron-
    core's DistributedOptimizer): ~12 bytes/param / DP instead of on every rank."""
    grad_reduce_in_fp32: bool = True
    """Accumulate and all-reduce gradients in fp32 (main grads) whatever the params dtype."""
    overlap_grad_reduce: bool = False
    """Overlap the gradient reduce-scatter with the backward pass (GPU only)."""
    overlap_param_gather: bool = False
    """Overlap the distributed optimizer's parameter all-gather with the next forward (GPU only;
    needs use_distributed_optimizer)."""
    bucket_size: int = 0
    """Elements per DDP communication bucket; 0 = megatron-core's default (max(40M, 1M x DP))."""
    initial_loss_scale: float = 2.0**32
    """fp16 only: the dynamic loss scaler's starting scale (bf16 and fp32 use no loss scale)."""

    def __post_init__(self) -> None:
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"optimizer.lr must be a finite number > 0, got {self.lr}")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"optimizer.min_lr must be in [0, optimizer.lr={self.lr}], got {self.min_lr}")
        if self.lr_decay_style not in LR_DECAY_STYLES:
            raise ValueError(f"optimizer.lr_decay_style must be one of {LR_DECAY_STYLES}, got {self.lr_decay_style!r}")
        for name in ("lr_warmup_steps", "lr_decay_steps", "bucket_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"optimizer.{name} must be an int >= 0, got {value!r}")
        if self.weight_decay < 0:
            raise ValueError(f"optimizer.weight_decay must be >= 0, got {self.weight_decay}")
        self.betas = tuple(self.betas)
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"optimizer.betas must be two numbers in [0, 1), got {self.betas}")
        if self.eps <= 0:
            raise ValueError(f"optimizer.eps must be > 0, got {self.eps}")
        if self.grad_clip < 0:
            raise ValueError(f"optimizer.grad_clip must be >= 0 (0 disables), got {self.grad_clip}")
        if self.overlap_param_gather and not self.use_distributed_optimizer:
            raise ValueError("optimizer.overlap_param_gather needs optimizer.use_distributed_optimizer=True")
        if self.initial_loss_scale <= 0:
            raise ValueError(f"optimizer.initial_loss_scale must be > 0, got {self.initial_loss_scale}")

    def check_device(self, on_cuda: bool) -> None:
        """Overlapped communication needs CUDA streams: refuse it on CPU before anything is built."""
        if not on_cuda:
            for name in ("overlap_grad_reduce", "overlap_param_gather"):
                if getattr(self, name):
                    from policy_split_megatron.errors import ConfigError

                    raise ConfigError(f"optimizer.{name}=True needs CUDA (it overlaps NCCL communication with "
                                     "compute on CUDA streams); set it to False on CPU")


def megatron_optimizer_config(cfg: OptimizerConfig, params_dtype: torch.dtype, *, lr: float | None = None,
                              min_lr: float | None = None):
    """megatron-core's OptimizerConfig for `cfg`, optionally with another peak and final learning rate
    (the warm start). They must be set here: megatron-core's scheduler reads each parameter group's
    max_lr/min_lr, which come from this config, before its own."""
    from megatron.core.optimizer import OptimizerConfig as MegatronOptimizerConfig

    return MegatronOptimizerConfig(
        optimizer="adam",
        lr=cfg.lr if lr is None else lr,
        min_lr=cfg.min_lr if min_lr is None else min_lr,
        weight_decay=cfg.weight_decay,
        adam_beta1=cfg.betas[0],
        adam_beta2=cfg.betas[1],
        adam_eps=cfg.eps,
        clip_grad=cfg.grad_clip,
        bf16=params_dtype == torch.bfloat16,
        fp16=params_dtype == torch.float16,
        params_dtype=params_dtype,
        initial_loss_scale=cfg.initial_loss_scale,
        use_distributed_optimizer=cfg.use_distributed_optimizer,
        overlap_param_gather=cfg.overlap_param_gather,
    )


def megatron_ddp_config(cfg: OptimizerConfig):
    from megatron.core.distributed import DistributedDataParallelConfig

    return DistributedDataParallelConfig(
        grad_reduce_in_fp32=cfg.grad_reduce_in_fp32,
        overlap_grad_reduce=cfg.overlap_grad_reduce,
        overlap_param_gather=cfg.overlap_param_gather,
        use_distributed_optimizer=cfg.use_distributed_optimizer,
        bucket_size=cfg.bucket_size or None,
    )
