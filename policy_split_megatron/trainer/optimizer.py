"""The policy's optimizer step on CPU machines: AdamW on plain `.grad` tensors.

megatron-core's optimizers read gradients from its CUDA-only DDP buffers and allocate their
grad-norm buffers on CUDA, so CPU runs use `PolicyOptimizer`, which does the same things in the
same order: cross-rank gradient reductions (`model/grads.py`), a NaN/Inf check, the global
gradient norm over the model-parallel group counting each tensor-parallel duplicate once
(megatron-core's own rule), clipping, the AdamW step. Its state is saved through megatron-core's
distributed checkpointing with the same sharding as the parameters it belongs to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.dist_checkpointing.optimizer import (
    get_param_id_to_sharded_param_map,
    optim_state_to_sharding_state,
)
from megatron.core.tensor_parallel import param_is_not_tensor_parallel_duplicate

from policy_split_megatron.model.grads import finalize_grads


@dataclass
class OptimizerConfig:
    lr: float = 1e-6
    """Learning rate (paper, Table 8: 3e-6 for Qwen3 1.7B-8B; constant)."""
    weight_decay: float = 0.01
    """Decoupled AdamW weight decay (paper: 1e-2)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value (paper: 1.0); 0 disables clipping."""

    def __post_init__(self) -> None:
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"optimizer.lr must be a finite number > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"optimizer.weight_decay must be >= 0, got {self.weight_decay}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"optimizer.betas must be two numbers in [0, 1), got {self.betas}")
        if self.eps <= 0:
            raise ValueError(f"optimizer.eps must be > 0, got {self.eps}")
        if self.grad_clip < 0:
            raise ValueError(f"optimizer.grad_clip must be >= 0 (0 disables), got {self.grad_clip}")


class NonFiniteGradientError(FloatingPointError):
    """A gradient held NaN or Inf: the step was not applied."""


class PolicyOptimizer:
    def __init__(self, model: torch.nn.Module, config: OptimizerConfig):
        self.model, self.config = model, config
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.params, lr=config.lr, betas=config.betas, eps=config.eps, weight_decay=config.weight_decay
        )

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def _grad_norm(self) -> float:
        local = torch.zeros((), dtype=torch.float64, device=self.params[0].device if self.params else None)
        for param in self.params:
            if param.grad is not None and param_is_not_tensor_parallel_duplicate(param):
                local += param.grad.detach().double().pow(2).sum()
        if parallel_state.get_model_parallel_group() is not None and dist.get_world_size() > 1:
            dist.all_reduce(local, group=parallel_state.get_model_parallel_group())
        return float(local.sqrt())

    def step(self, *, step_index: int) -> float:
        """Reduce, check, clip and apply the gradients; return the global grad norm (before
        clipping). Raises NonFiniteGradientError (and leaves the weights untouched) on NaN/Inf."""
        finalize_grads(self.model)
        norm = self._grad_norm()
        if not math.isfinite(norm):
            bad = next(
                (n for n, p in self.model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()),
                "a parameter on another rank",
            )
            self.zero_grad()
            raise NonFiniteGradientError(
                f"step {step_index}: the gradient norm is {norm} (first non-finite gradient: {bad}); "
                "the update was skipped and no checkpoint is written from this state"
            )
        if self.config.grad_clip and norm > self.config.grad_clip:
            scale = self.config.grad_clip / (norm + 1e-6)
            for param in self.params:
                if param.grad is not None:
                    param.grad.mul_(scale)
        self.optimizer.step()
        self.zero_grad()
        return norm

    def _materialize_state(self) -> None:
        """Create AdamW's per-parameter state before the first step, so a checkpoint template has
        the tensors a saved state is loaded into."""
        for param in self.params:
            state = self.optimizer.state[param]
            if not state:
                state["step"] = torch.tensor(0.0)
                state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)

    def sharded_state_dict(self, model_sharded_state_dict: dict) -> dict:
        """The AdamW state as megatron-core sharded tensors aligned with the model's sharding."""
        self._materialize_state()
        state = self.optimizer.state_dict()
        id_map = get_param_id_to_sharded_param_map(model_sharded_state_dict, self.params)
        steps = {float(s["step"]) for s in state["state"].values() if "step" in s}
        optim_state_to_sharding_state(state, id_map, exclude_keys=("step",))
        state["common_step"] = steps.pop() if steps else 0.0
        return state

    def load_sharded_state_dict(self, loaded: dict) -> None:
        step = loaded.pop("common_step")
        for param_state in loaded["state"].values():
            param_state["step"] = torch.tensor(step)
        self.optimizer.load_state_dict(loaded)
